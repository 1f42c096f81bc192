// The libos Pyodide host: Python tools in a Deno process that may read Pyodide's own asset
// directory and nothing else, and only until Pyodide has loaded.
//
// `sandboxes/pyodide.py` starts `deno run <every --deny-* flag but --allow-read=DIR> main.ts
// DIR MEMORY_MB` (or check.ts for the registration checker). This module:
//   1. captures stdin/stdout privately, loads Pyodide from DIR (from the memory snapshot that
//      `libos setup` left there, else from scratch), with WebAssembly memory growth capped at
//      its size after loading plus MEMORY_MB;
//   2. revokes the read permission (from then on nothing at all is readable), hides the
//      channel and Deno's internals from the global scope, disables Workers and Deno.exit,
//      takes Pyodide's own API out of Python's reach and hardens the realm (lockdown.ts);
//   3. runs the Python side (libos.py), sends a tool of its own through the frame handler
//      (`warmUp`: its answers kept, never written), says hello, and serves frames: `load`
//      keeps a tool's source, `check` compiles it (a registration; never runs it), `call`
//      runs it (its arguments as JSON text where that is exact, its own random token for its
//      syscalls). A syscall is a synchronous round trip: the frame is written and stdin read
//      until its answer arrives, so a plain `def run(args, libos)` gets its value without
//      stack switching, and nothing else reads the channel meanwhile.
//
// Hiding things is defence in depth only (Python reaches Deno's globals through `import js`):
// the broker assumes a tool can always write to stdout, checks every frame against the one
// authority this process serves, and enforces limits by killing it.

import { hideHostGlobals } from "../hide.ts";
import { lockdown } from "../lockdown.ts";
import { RUNTIME_MODULES } from "../modules.ts";
import * as host from "./host.ts";
import { ERRORS } from "../errors.ts";
import { type Message, parseMessage, PROTOCOL_VERSION } from "../messages.ts";
import { encodeFrame, FrameDecoder, ProtocolFault } from "../msgpack.ts";
import { SYSCALLS } from "../syscalls.gen.ts";
import ERRORS_PY from "./errors.gen.py" with { type: "text" };
import RUNTIME_PY from "./libos.py" with { type: "text" };

export const SNAPSHOT = "libos-snapshot.bin";
// What Python is told its executable is (Pyodide would take the host path of the script Deno
// runs): no host path reaches tool code (issue 14). The snapshot maker passes it too.
export const PYTHON_EXECUTABLE = "/usr/bin/python3";
const MAX_LOG_CHARS = 64 * 1024;
const MAX_MESSAGE_CHARS = 4096;
// A worn process says this on stderr before it leaves: the driver's call gets LimitExceeded.
const LIMIT = "libos-limit: ";

// -- capture before anything else runs --------------------------------------------------------

const writeSync = Deno.stdout.writeSync.bind(Deno.stdout);
const readSync = Deno.stdin.readSync.bind(Deno.stdin);
const stderrWrite = Deno.stderr.writeSync.bind(Deno.stderr);
const exit = Deno.exit;
const args = [...Deno.args];
const revokeRead = () => Deno.permissions.revokeSync({ name: "read" });
const readFile = Deno.readFile;
const statFile = Deno.statSync;
const toFileUrl = (path: string) => "file://" + path.split("/").map(encodeURIComponent).join("/");
const realGrow = WebAssembly.Memory.prototype.grow;
const inspect = Deno.inspect;

// Where the warm-up's answers go instead of the channel (`warmUp`), while it runs.
let muted: Uint8Array[] | null = null;

function write(frame: Uint8Array): void {
  if (muted !== null) {
    muted.push(frame);
    return;
  }
  let off = 0;
  while (off < frame.length) off += writeSync(frame.subarray(off));
}

function send(msg: Record<string, unknown>): void {
  write(encodeFrame(msg));
}

/** A line on stderr, which the driver keeps the tail of. */
function say(what: string): void {
  try {
    stderrWrite(new TextEncoder().encode(`libos pyodide host: ${what}\n`));
  } catch { /* nothing more to say */ }
}

function fatal(why: string): never {
  say(why);
  return exit(70);
}

const decoder = new FrameDecoder();
const buf = new Uint8Array(1 << 16);

/** The next frame from the broker (blocking), or null when it closed our stdin. */
function nextMessage(): Message | null {
  while (true) {
    let d;
    try {
      d = decoder.next();
      if (d !== null) return parseMessage(d);
    } catch (e) {
      fatal(`bad frame from the broker: ${(e as Error).message}`);
    }
    let n: number | null;
    try {
      n = readSync(buf);
    } catch (e) {
      fatal(`stdin: ${e}`);
    }
    if (n === null) return null;
    try {
      decoder.feed(buf.slice(0, n));
    } catch (e) {
      fatal(`bad frame from the broker: ${(e as Error).message}`);
    }
  }
}

// -- calls ------------------------------------------------------------------------------------

interface CallState {
  id: number;
  seq: number;
  ended: boolean;
  cancelled: boolean;
  token: number;
}

let current: CallState | null = null;
// Set when the heap cap refused memory (or Pyodide failed fatally): the process is worn. It
// leaves instead of answering, saying why on stderr, and the driver reports that (an "out of
// memory" death is LimitExceeded) to the call in flight; the next call gets a fresh process.
let worn: string | null = null;

type Answer = [string | undefined, unknown];

// Each call's token: 53 random bits, which no code of an earlier call can know in advance.
const randomWords = new Uint32Array(2);
const fillRandom = crypto.getRandomValues.bind(crypto);
function newToken(): number {
  fillRandom(randomWords);
  return randomWords[0] * 2 ** 21 + (randomWords[1] >>> 11);
}

/** The Python side's only way to make a syscall: a synchronous round trip, [undefined, value]
 * or [code, message], for the call whose token it names. That token is the call's own
 * (handed to the Python side with the call, as a function of its own would be): once the call
 * has ended it refuses, whoever kept it; no other call's can be named. One function for every
 * call, so no call pays for a new function crossing into Python. */
function syscallOf(token: unknown, name: unknown, args: unknown): Answer {
  const call = current;
  if (call === null || token !== call.token || call.ended) {
    return ["CANCELLED", "the call this libos belongs to has ended"];
  }
  return syscall(call, name, args);
}

function syscall(call: CallState, name: unknown, args: unknown): Answer {
  if (call.cancelled) return ["CANCELLED", "call cancelled"];
  const id = call.id;
  if (typeof name !== "string") return ["INVALID_ARGUMENT", "syscall name must be a str"];
  const seq = call.seq++;
  let frame: Uint8Array;
  try {
    frame = encodeFrame({ t: "syscall", id, seq, name, args });
  } catch (e) {
    return ["INVALID_ARGUMENT", `${name}: arguments cannot be sent: ${(e as Error).message}`];
  }
  write(frame);
  while (true) {
    const msg = nextMessage();
    if (msg === null) return exit(0);
    if (msg.t === "sysret") {
      if (msg.id !== id || msg.seq !== seq) fatal(`sysret for (${msg.id}, ${msg.seq}), not pending`);
      return msg.ok ? [undefined, msg.value] : [msg.code, msg.message];
    }
    if (msg.t === "cancel") {
      if (msg.id === id) call.cancelled = true;
      continue;
    }
    fatal(`a ${msg.t} frame during a syscall`);
  }
}

function log(level: string, text: string): void {
  const call = current;
  if (call === null || call.ended) return; // nobody to attribute it to: dropped
  if (text.length > MAX_LOG_CHARS) {
    text = text.slice(0, MAX_LOG_CHARS) + `…(+${text.length - MAX_LOG_CHARS} chars)`;
  }
  send({ t: "log", id: call.id, level, text });
}

// Python's stdout (info) and stderr (warn) as log frames of the call in flight: one per line,
// a long line in pieces, and what is left without a newline when the call ends.
const pendingText: Record<string, string> = { info: "", warn: "" };
const utf8 = { info: new TextDecoder(), warn: new TextDecoder() };

function output(level: "info" | "warn") {
  return {
    write(buf: Uint8Array): number {
      let text = pendingText[level] + utf8[level].decode(buf, { stream: true });
      let nl: number;
      while ((nl = text.indexOf("\n")) >= 0) {
        log(level, text.slice(0, nl));
        text = text.slice(nl + 1);
      }
      while (text.length >= MAX_LOG_CHARS) {
        log(level, text.slice(0, MAX_LOG_CHARS));
        text = text.slice(MAX_LOG_CHARS);
      }
      pendingText[level] = text;
      return buf.length;
    },
  };
}

function flushOutput(): void {
  for (const level of ["info", "warn"] as const) {
    if (pendingText[level]) log(level, pendingText[level]);
    pendingText[level] = "";
  }
}

// -- Pyodide ----------------------------------------------------------------------------------

// deno-lint-ignore no-explicit-any
type Py = any;

async function loadPython(dir: string, memoryMb: number): Promise<Py> {
  // The snapshot (tens of MB) is read on another thread while Pyodide's modules load and
  // compile: loadPyodide awaits it only when it makes the WebAssembly memory.
  const path = `${dir}/${SNAPSHOT}`;
  let snapshot: Promise<Uint8Array> | undefined;
  try {
    if (statFile(path).isFile) snapshot = readFile(path);
  } catch { /* no snapshot: a cold load, seconds instead of a fraction of one */ }
  snapshot?.catch(() => {}); // a failed read fails loadPyodide, which awaits it
  // deno-lint-ignore no-explicit-any
  const mod: any = await import(toFileUrl(`${dir}/pyodide.mjs`));
  const quiet = () => {};
  const py = await mod.loadPyodide({
    indexURL: `${dir}/`,
    packages: [],
    env: { HOME: "/home/pyodide" },
    _sysExecutable: PYTHON_EXECUTABLE,
    stdout: quiet,
    stderr: quiet,
    checkAPIVersion: true,
    ...(snapshot ? { _loadSnapshot: snapshot } : {}),
  });
  // Python's heap is WebAssembly memory, which V8's heap flag does not bound: cap its growth
  // (emscripten grows it through Memory.prototype.grow; a refusal is a MemoryError in Python).
  // RLIMIT_DATA, set by the driver, bounds everything else the process might allocate.
  const heap = () => (py._module.HEAPU8 as Uint8Array).buffer;
  const cap = heap().byteLength + memoryMb * 1024 * 1024;
  Object.defineProperty(WebAssembly.Memory.prototype, "grow", {
    value: function grow(this: WebAssembly.Memory, pages: number): number {
      const size = this.buffer.byteLength;
      if (this.buffer === heap() && size + pages * 65536 > cap) {
        worn = `${LIMIT}the Python heap cap of ${memoryMb} MiB is reached (out of memory)`;
        throw new RangeError(`the Python heap cap of ${memoryMb} MiB is reached`);
      }
      return realGrow.call(this, pages);
    },
    writable: false,
    configurable: false,
  });
  return py;
}

// What a snapshot's copy of the Python side must have been made from to be used as it is.
const RUNTIME = ERRORS_PY + "\0" + RUNTIME_PY;

/** The Python side as modules `_libos_errors` (errors.gen.py, generated from broker/errors.py)
 * and `_libos_runtime` (libos.py, which imports the first): the snapshot's copies when they
 * are these very sources (`libos setup` puts them there), else executed now (slower: a stale
 * snapshot). */
export function runtimeModule(py: Py): Py {
  const sys = py.pyimport("sys");
  const found = sys.modules.get("_libos_runtime");
  sys.destroy();
  if (found !== undefined && found.__libos_source__ === RUNTIME) return found;
  found?.destroy?.();
  for (const [name, source] of [["_libos_errors", ERRORS_PY], ["_libos_runtime", RUNTIME_PY]]) {
    const ns = py.runPython(
      `import sys, types\n_m = types.ModuleType('${name}')\nsys.modules['${name}'] = _m\n_m.__dict__`,
    );
    if (name === "_libos_runtime") ns.set("__libos_source__", RUNTIME);
    py.runPython(source, { globals: ns, filename: `<libos runtime: ${name}>` });
    ns.destroy();
  }
  return py.pyimport("_libos_runtime");
}

function hide(): void {
  hideHostGlobals(["stdout", "stdin", "stderr", "internal", "mainModule", "args"],
    (what) => new Error(`NotCapable: ${what} not available to a libos tool`));
  // JavaScript's console (reached from Python as js.console) writes log frames of the call in
  // flight, like Python's print, instead of raw bytes on the channel.
  const show = (args: unknown[]) => args.map((a) => typeof a === "string" ? a : inspect(a)).join(" ");
  const to = (level: string) => (...args: unknown[]) => log(level, show(args));
  const quiet = () => {};
  const console_ = {
    log: to("info"), info: to("info"), debug: to("debug"), trace: to("debug"), warn: to("warn"),
    error: to("error"), dir: to("info"), dirxml: to("info"), table: to("info"),
    assert: (cond: unknown, ...args: unknown[]) => cond ? undefined : log("error", show(["Assertion failed", ...args])),
    count: quiet, countReset: quiet, group: quiet, groupCollapsed: quiet, groupEnd: quiet,
    time: quiet, timeEnd: quiet, timeLog: quiet, clear: quiet,
  };
  Object.defineProperty(globalThis, "console", { value: Object.freeze(console_), writable: false, configurable: false });
  globalThis.addEventListener("unhandledrejection", (e) => {
    e.preventDefault();
    log("error", `unhandled rejection: ${e.reason}`);
  });
  globalThis.addEventListener("error", (e) => {
    e.preventDefault();
    log("error", `uncaught error: ${e.error ?? e.message}`);
  });
}

/** Whether JSON carries `v` to Python exactly as Pyodide's conversion would: str, bool, null,
 * safe integers, finite non-integral numbers, arrays and plain objects of them. Anything else
 * (bytes, big or non-finite numbers, -0) crosses as a JS object, converted there. */
function jsonSafe(v: unknown, depth: number): boolean {
  switch (typeof v) {
    case "string":
    case "boolean":
      return true;
    case "number":
      return Number.isSafeInteger(v) ? !Object.is(v, -0) : Number.isFinite(v) && !Number.isInteger(v);
    case "object": {
      if (v === null) return true;
      if (depth > 64) return false;
      if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) if (!jsonSafe(v[i], depth + 1)) return false;
        return true;
      }
      if (Object.getPrototypeOf(v) !== Object.prototype) return false;
      const obj = v as Record<string, unknown>;
      for (const k of Object.keys(obj)) if (!jsonSafe(obj[k], depth + 1)) return false;
      return true;
    }
    default:
      return false;
  }
}

/** A call's arguments for the Python side: JSON text where that is exact (the Python side
 * parses it, much cheaper than converting a JS object), else the decoded value itself; none
 * at all (undefined, None in Python) for no arguments, the most common call's, which then
 * crosses without converting a string. */
const toJson = JSON.stringify;
function argsForPython(args: unknown): unknown {
  if (!jsonSafe(args, 0)) return args;
  const text = toJson(args);
  return text === "{}" ? undefined : text;
}

// Per tool name, the Python side's `call` bound to that name (`caller`), kept for the
// sandbox's life: a warm call hands Python the call's token and arguments, not the tool's
// name too (a string converted at every call; issue 17). A name's tool may be loaded again:
// the bound call looks the tool up at every call. Names are the few a broker loads here.
const callers = new Map<string, Py>();
function callerOf(runtime: Py, tool: string): Py {
  let bound = callers.get(tool);
  if (bound === undefined) callers.set(tool, bound = runtime.caller(tool));
  return bound;
}

/** A failed call's answer, as the Python side reports it (`_fail`): no result is one, since a
 * result is plain data (objects and arrays made by Pyodide's conversion, or primitives). */
class Failure {
  constructor(readonly code: unknown, readonly message: unknown) {}
}
const fail = (code: unknown, message: unknown): Failure => new Failure(code, message);

function fromPython(out: unknown): Answer {
  if (!(out instanceof Failure)) return [undefined, out];
  const code = out.code;
  return [typeof code === "string" && ERRORS[code] !== undefined ? code : "TOOL_FAILED",
    String(out.message)];
}

function resultFrame(id: number, answer: Answer): Uint8Array {
  let [code, value] = answer;
  if (code === undefined) {
    try {
      return encodeFrame({ t: "result", id, value: value === undefined ? null : value });
    } catch (e) {
      if (!(e instanceof ProtocolFault)) throw e;
      [code, value] = ["TOOL_FAILED", `the result cannot be sent: ${e.message}`];
    }
  }
  let message = String(value);
  if (message.length > MAX_MESSAGE_CHARS) message = message.slice(0, MAX_MESSAGE_CHARS) + "…";
  return encodeFrame({ t: "error", id, code, message });
}

// V8 compiles Pyodide's WebAssembly (and the host's own code) lazily, function by function, so
// a fresh sandbox's first check and call used to pay for compiling the paths they take: the
// frames' decoding and checking, the interpreter's parser and compiler, the module's
// execution, the values' conversion, the answer's encoding. Before its hello, a sandbox sends
// a trivial tool of the runtime's own through exactly what a registration's frames and its
// first call go through (`handle`: load, check, call), its answers kept here instead of
// written (`muted`); no frame names the tool afterwards. A warm-up that fails says so on
// stderr (the driver keeps its tail), since nothing else shows it: its name once held a NUL,
// which Python refuses in the filename a tool compiles under, so the check and the call failed
// at once and warmed none of that (issue #17: a spare's check of a two-line tool took ~8 ms of
// the main thread's CPU; ~2 ms with a warm-up of the Python side alone; through `handle`,
// Deno's CPU, all threads, for a registration's check and first call went from 4.6 to 3.7
// ms, medians of 40 alternated runs at a load of 6-7: README). More rounds of it (8) gained
// nothing measurable.
const WARM_UP = "(warm-up)"; // no frame names it: a tool name the broker takes has no "("
// No syscall: its answer would be awaited from a broker that waits for the hello.
const WARM_UP_SOURCE = "def run(args, libos):\n    return {'echo': args, 'n': len(args)}\n";
const WARM_UP_FRAMES = [
  { t: "load", tool: WARM_UP, lang: "python", hash: "-", source: WARM_UP_SOURCE },
  { t: "check", id: 1, tool: WARM_UP },
  { t: "call", id: 2, tool: WARM_UP, args: { k: [1, "x", 2.5, true, null] } },
];

async function warmUp(handle: Handler, runtime: Py): Promise<void> {
  const answers: Uint8Array[] = muted = [];
  let taken = 0;
  try {
    // Through the channel's own decoder: it holds whole frames, so nothing is read from stdin.
    for (const frame of WARM_UP_FRAMES) decoder.feed(encodeFrame(frame));
    while (taken < WARM_UP_FRAMES.length) {
      const msg = nextMessage()!;
      taken++;
      const pending = handle(msg);
      if (pending !== undefined) await pending;
    }
    const out = new FrameDecoder();
    for (const frame of answers) out.feed(frame);
    for (let d = out.next(); d !== null; d = out.next()) {
      const msg = parseMessage(d);
      if (msg.t === "error") say(`the warm-up's frame ${msg.id} failed: ${msg.code}: ${msg.message}`);
    }
  } catch (e) {
    say(`the warm-up failed: ${(e as Error)?.message ?? e}`); // only a spare's first call is slower
  } finally {
    for (; taken < WARM_UP_FRAMES.length; taken++) nextMessage(); // none is left for the broker's
    muted = null;
  }
  try {
    runtime._tools.delete(WARM_UP);
    callers.get(WARM_UP)?.destroy();
    callers.delete(WARM_UP);
  } catch { /* an entry no frame can name */ }
}

type Handler = (msg: Message) => Promise<void> | undefined;
type ToolFrame = Extract<Message, { t: "call" | "check" }>;

/** What serves the broker's frames: each handled whole (its answer written) before the next
 * is read; an async tool's call by the promise returned (nothing else returns one). */
function handler(runtime: Py, mode: "run" | "check"): Handler {
  const pyLoad = runtime.load;
  const pyCheck = runtime.check_call;
  const pyCheckLoaded = runtime.check_loaded;
  const sources = new Map<string, string>();

  /** The Python side's answer: a value, a failure, or (an async tool's call) a future. */
  function run(msg: ToolFrame, call: CallState): unknown {
    // `check`: a registration checked in the sandbox that will run the tool (the tool is
    // loaded, parsed and compiled, never run); the checker's own protocol is a `call`.
    if (msg.t === "check") return pyCheckLoaded(msg.tool);
    if (mode === "check") return pyCheck(sources.get(msg.tool) ?? "", msg.tool);
    return callerOf(runtime, msg.tool)(call.token, argsForPython(msg.args));
  }

  async function settle(msg: ToolFrame, call: CallState, future: Py): Promise<void> {
    let answer: Answer;
    try {
      let out: unknown;
      try {
        out = await future;
      } finally {
        future.destroy?.();
      }
      answer = answered(out);
    } catch (e) {
      answer = crashed(e);
    }
    finish(msg, call, answer);
  }

  return function handle(msg: Message): Promise<void> | undefined {
    switch (msg.t) {
      case "load":
        if (mode === "check") sources.set(msg.tool, msg.source);
        else pyLoad(msg.tool, msg.hash, msg.source);
        return undefined;
      case "call":
      case "check": {
        if (msg.t === "check" && mode === "check") fatal("the checker does not receive check");
        const call: CallState = { id: msg.id, seq: 0, ended: false, cancelled: false, token: newToken() };
        current = call;
        let answer: Answer;
        try {
          const out = run(msg, call);
          if (out !== null && typeof out === "object" && typeof (out as Py).then === "function") {
            return settle(msg, call, out);
          }
          answer = answered(out);
        } catch (e) {
          answer = crashed(e);
        }
        finish(msg, call, answer);
        return undefined;
      }
      case "cancel":
        return undefined; // for a call that has already answered
      default:
        fatal(`a sandbox does not receive ${msg.t}`);
    }
  };
}

function answered(out: unknown): Answer {
  flushOutput();
  return fromPython(out);
}

/** The Python side answers every failure of a tool itself: an exception that gets here is
 * Pyodide's own failure, which leaves it unusable. */
function crashed(e: unknown): Answer {
  const text = String((e as Error)?.message ?? e);
  worn ??= /call stack/i.test(text)
    ? `${LIMIT}the tool overflowed the stack (recursion too deep for WebAssembly)`
    : `Pyodide failed: ${text.slice(0, 300)}`;
  return ["SANDBOX_CRASHED", "Pyodide failed"];
}

function finish(msg: ToolFrame, call: CallState, answer: Answer): void {
  pendingText.info = pendingText.warn = ""; // a failed call's leftovers are dropped
  call.ended = true;
  current = null;
  if (worn !== null) fatal(worn);
  if (call.cancelled) answer = ["CANCELLED", "call cancelled"];
  write(resultFrame(msg.id, answer));
}

export async function serve(mode: "run" | "check"): Promise<void> {
  const [dir, memoryArg] = args;
  if (!dir) fatal("usage: main.ts PYODIDE_DIR MEMORY_MB");
  const memoryMb = Number(memoryArg ?? "256");
  let py: Py;
  try {
    py = await loadPython(dir.replace(/\/+$/, ""), memoryMb);
  } catch (e) {
    fatal(`Pyodide did not load from ${dir}: ${(e as Error).message}`);
  }
  revokeRead();
  hide();
  // A snapshot made before the maker passed PYTHON_EXECUTABLE holds a host path there.
  py.runPython(`import sys\nsys.executable = sys._base_executable = ${JSON.stringify(PYTHON_EXECUTABLE)}\n` +
    `sys.orig_argv = [sys.executable]`);
  py.setStdout(output("info"));
  py.setStderr(output("warn"));

  const runtime = runtimeModule(py);
  runtime.init(
    JSON.stringify(SYSCALLS),
    JSON.stringify(Object.keys(ERRORS)),
    Object.fromEntries,
    fail,
    syscallOf,
  );
  // Python reaches JavaScript's globals through `import js`, and Pyodide's API through
  // `import pyodide_js` (behind it, the emscripten module the host calls Python through):
  // the API is taken away, and the globals are hardened as in a TypeScript sandbox, so no
  // call can plant a hook in a built-in that a later one (or the host) uses.
  py.unregisterJsModule("pyodide_js");
  py.runPython("import sys\nfor _m in [m for m in sys.modules if m.split('.')[0] == 'pyodide_js']:\n    del sys.modules[_m]\ndel _m");
  lockdown(["TextEncoder", "TextDecoder"], [ERRORS, ...RUNTIME_MODULES, host]);
  const handle = handler(runtime, mode);
  // After the hardening, which changes the shapes of the objects the compiled code has met.
  if (mode === "run") await warmUp(handle, runtime);

  send({ t: "hello", v: PROTOCOL_VERSION, kind: "pyodide" });
  while (true) {
    const msg = nextMessage();
    if (msg === null) break;
    const pending = handle(msg);
    if (pending !== undefined) await pending;
  }
  exit(0);
}
