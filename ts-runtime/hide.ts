// What a sandboxed tool could use to reach the channel or leave by a side door is taken out
// of reach before tool code runs. This is defence in depth only: the broker treats a sandbox
// process as one principal whatever it writes (docs/DESIGN.md, invariant 2).

export function hideHostGlobals(keys: string[], refuse: (what: string) => Error): void {
  const Denoish = Deno as unknown as Record<string | symbol, unknown>;
  const internal = Denoish.internal as symbol | undefined;
  for (const key of keys) {
    try {
      delete Denoish[key];
    } catch { /* not configurable: stays, the broker does not rely on this */ }
  }
  if (internal !== undefined) {
    try {
      delete Denoish[internal];
    } catch { /* as above */ }
  }
  // Node's `process` (a lazy global) would hand out process.stdout, and Node's `Buffer` cannot
  // load in a hardened realm (its module assigns to frozen built-ins). Web storage and the
  // Cache API keep what one sandbox stores in Deno's directory, which every sandbox of a
  // driver shares, whatever process it serves, and need no permission: a channel between
  // authorities. None of them is there at all.
  for (const name of ["process", "Buffer", "localStorage", "sessionStorage", "caches"]) {
    try {
      Object.defineProperty(globalThis, name, { value: undefined, writable: false, configurable: false });
    } catch { /* as above */ }
  }
  Denoish.exit = () => {
    throw refuse("Deno.exit is");
  };
  class NoWorker {
    constructor() {
      throw refuse("Workers are");
    }
  }
  Object.defineProperty(globalThis, "Worker", { value: NoWorker, writable: false, configurable: false });
}
