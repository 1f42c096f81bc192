// What a sandboxed tool could use to reach the channel or leave by a side door is taken out
// of reach before tool code runs. This is defence in depth only: the broker treats a sandbox
// process as one principal whatever it writes (docs/DESIGN.md, invariant 2).

// Where and how the broker runs is none of a tool's business: the Deno executable's path, the
// host's working directory and process ids. They need no permission in Deno, so they are
// replaced by refusals (NotCapable), like the APIs that do need one.
const HOST_FUNCTIONS = ["execPath", "cwd"];
const HOST_VALUES = ["pid", "ppid"];

/** A frame's file as a tool may see it: the runtime's own modules by name only (their host
 * path says where libos is installed), a tool's own module as it is. */
function frameFile(file: string): string {
  if (!file.startsWith("file:") && !file.startsWith("/")) return file;
  return "libos:" + file.slice(file.lastIndexOf("/") + 1);
}

/** V8's stack formatting, with host paths taken out of every frame. Installed before
 * lockdown freezes `Error`, so no tool can replace it. */
function prepareStackTrace(error: Error, frames: { getFileName(): string | null | undefined }[]): string {
  const lines = [String(error)];
  for (const frame of frames) {
    let text = String(frame);
    const file = frame.getFileName();
    if (file) text = text.split(file).join(frameFile(file));
    lines.push(`    at ${text}`);
  }
  return lines.join("\n");
}

export function hideHostGlobals(keys: string[], refuse: (what: string) => Error): void {
  const Denoish = Deno as unknown as Record<string | symbol, unknown>;
  for (const name of HOST_FUNCTIONS) {
    Object.defineProperty(Denoish, name, {
      value: () => {
        throw refuse(`Deno.${name}() is`);
      },
      writable: false,
      configurable: false,
    });
  }
  for (const name of HOST_VALUES) {
    Object.defineProperty(Denoish, name, {
      get: () => {
        throw refuse(`Deno.${name} is`);
      },
      configurable: false,
    });
  }
  Object.defineProperty(Error, "prepareStackTrace", {
    value: prepareStackTrace,
    writable: false,
    configurable: false,
  });
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
