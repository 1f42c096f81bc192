// The libos TypeScript sandbox runtime: the entry point `sandboxes/deno.py` starts in a Deno
// process that has no --allow-* flag at all.
//
// It speaks the frame protocol over stdin/stdout (see tests/vectors/README.md), loads tools
// from source (a data: URL import, which needs no permission), runs one call at a time, and
// turns `libos.*` calls into syscall frames. It holds no authority: whatever a tool does
// here, the broker checks every frame against the one process this sandbox belongs to.
//
// Before any tool code exists this module captures the real stdin/stdout privately and
// removes them (and Deno's internals) from the global scope, replaces `console` with one that
// writes log frames, and disables Workers. That is defence in depth only: the broker assumes a
// tool can always write to stdout, and kills the sandbox on the first frame that is wrong.
// This module exports nothing, so importing it again yields nothing.
//
// Then, still before any tool code exists, it hardens the realm (lockdown.ts): every built-in
// is frozen and every global binding read-only, so no call can plant a hook in a built-in the
// runtime or a later call uses. Each call gets its own syscall function, bound to that call:
// once the call has ended it refuses (Cancelled), whoever kept it.

import * as errors from "./errors.ts";
import { hideHostGlobals } from "./hide.ts";
import { LIBOS_PROTOTYPE, makeLibos } from "./libos.ts";
import { lockdown } from "./lockdown.ts";
import { RUNTIME_MODULES } from "./modules.ts";
import { type Message, parseMessage, PROTOCOL_VERSION } from "./messages.ts";
import { DEFAULT_LIMITS, encodeFrame, FrameDecoder, ProtocolFault } from "./msgpack.ts";
import { SYSCALLS } from "./syscalls.gen.ts";

// -- capture, then hide -----------------------------------------------------------------------

// Bound now, so that a tool patching a prototype later cannot reroute or observe them (it can
// only ever break its own channel, which the broker then kills).
const writeSync = Deno.stdout.writeSync.bind(Deno.stdout);
const writeStderr = Deno.stderr.writeSync.bind(Deno.stderr);
const stdin = Deno.stdin;
const readStdin = stdin.read.bind(stdin);
const readStdinSync = stdin.readSync.bind(stdin);
const exit = Deno.exit;
const inspect = Deno.inspect;
const DenoNotCapable = Deno.errors.NotCapable;
const DenoPermissionDenied = Deno.errors.PermissionDenied;
// Deno's timers are lazily loaded globals: the first read of one loads a module of some weight
// (Node-compatible timer objects), tens of ms of every sandbox's start. Their getters are kept
// and called when a call first sets a timer (after lockdown, as a tool's first read would be).
interface Timers {
  setTimeout: (...a: unknown[]) => unknown;
  setInterval: (...a: unknown[]) => unknown;
  clearTimeout: (id: unknown) => void;
  clearInterval: (id: unknown) => void;
}
const applyFn = Reflect.apply;
const timerGetters = (["setTimeout", "setInterval", "clearTimeout", "clearInterval"] as const)
  .map((name) => {
    const desc = Object.getOwnPropertyDescriptor(globalThis, name)!;
    return [name, desc.get ?? (() => desc.value)] as const;
  });
let realTimers: Timers | null = null;

function timers(): Timers {
  if (realTimers === null) {
    const found: Record<string, unknown> = {};
    for (const [name, get] of timerGetters) found[name] = applyFn(get, globalThis, []);
    realTimers = found as unknown as Timers;
  }
  return realTimers;
}
hideHostGlobals(["stdout", "stdin", "stderr", "internal", "mainModule", "args"],
  (what) => new errors.NotCapable(`${what} not available to a libos tool`));

// -- the channel --------------------------------------------------------------------------------

function write(frame: Uint8Array): void {
  let off = 0;
  while (off < frame.length) off += writeSync(frame.subarray(off));
}

function send(msg: Record<string, unknown>): void {
  write(encodeFrame(msg));
}

function fatal(why: string): never {
  try {
    writeStderr(new TextEncoder().encode(`libos runtime: ${why}\n`));
  } catch { /* nothing more to say */ }
  return exit(70);
}

// -- calls ------------------------------------------------------------------------------------

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  promise: Promise<unknown>;
  waits: boolean; // a blocking syscall's (see `QUICK`)
}

interface CallState {
  id: number;
  seq: number;
  pending: Map<number, Pending>;
  waits: number; // how many of `pending` are blocking syscalls
  timers: Set<unknown>;
  intervals: Set<unknown>;
  ended: boolean;
  cancelled: boolean;
}

interface ToolEntry {
  hash: string;
  module: Promise<Record<string, unknown>>;
  run?: (args: unknown, libos: unknown) => unknown;
}

const tools = new Map<string, ToolEntry>();
let current: CallState | null = null;
const MAX_LOG_CHARS = 64 * 1024;
// Refused here, typed, before the broker's own bound (which kills the sandbox) is reached.
const MAX_PENDING = DEFAULT_LIMITS.max_pending_syscalls - 24;
const MAX_MESSAGE_CHARS = 4096;

function syscallFor(call: CallState) {
  return (name: string, args: Record<string, unknown>): Promise<unknown> => {
    if (call !== current || call.ended || call.cancelled) {
      return Promise.reject(new errors.Cancelled("the call this libos belongs to has ended"));
    }
    if (typeof args !== "object" || args === null || Array.isArray(args)) {
      return Promise.reject(new errors.InvalidArgument(`${name}: arguments must be an object`));
    }
    if (call.pending.size >= MAX_PENDING) {
      // The broker refuses more unanswered syscalls than that (a protocol error that kills
      // the sandbox): refuse them here, typed, so the tool can wait and retry.
      return Promise.reject(new errors.LimitExceeded(`${name}: more than ${MAX_PENDING} syscalls in flight`));
    }
    const seq = call.seq++;
    let frame: Uint8Array;
    try {
      frame = encodeFrame({ t: "syscall", id: call.id, seq, name, args });
    } catch (e) {
      return Promise.reject(new errors.InvalidArgument(`${name}: arguments cannot be sent: ${(e as Error).message}`));
    }
    let resolve!: (v: unknown) => void, reject!: (e: unknown) => void;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const waits = !QUICK.has(name);
    call.pending.set(seq, { resolve, reject, promise, waits });
    if (waits) call.waits++;
    write(frame);
    return promise;
  };
}

// Refusals by Deno's own sandbox that do not arrive as Deno.errors.NotCapable: module loads
// (files, npm:, jsr:, http:) and code generation from strings.
const REFUSED = /Requires \S+ access|--no-npm|--no-remote|--allow-import|--allow-read|not allowed|disallowed/;
const TOOL_URL = /data:application\/typescript;charset=utf-8,[^\s:)]*/g;

function toolError(e: unknown): [string, string] {
  if (e instanceof errors.LibosError) return errors.toolFailure(String(e.code), e.message);
  if (e instanceof DenoNotCapable || e instanceof DenoPermissionDenied) {
    return ["NOT_CAPABLE", (e as Error).message];
  }
  if (e instanceof ProtocolFault) return ["TOOL_FAILED", `the result cannot be sent: ${e.message}`];
  if (e instanceof RangeError && /call stack|allocation failed|Invalid (array|string|typed array) length/.test(e.message)) {
    return ["LIMIT_EXCEEDED", `${e.name}: ${e.message}`];
  }
  if (e instanceof Error) {
    const message = `${e.name}: ${e.message}`.replace(TOOL_URL, "<tool>");
    if ((e instanceof TypeError || e instanceof EvalError) && REFUSED.test(e.message)) {
      return ["NOT_CAPABLE", message];
    }
    return ["TOOL_FAILED", message];
  }
  let text: string;
  try {
    text = typeof e === "string" ? e : inspect(e);
  } catch {
    text = "a value that cannot be shown";
  }
  return ["TOOL_FAILED", `tool threw ${text}`];
}

async function drain(call: CallState): Promise<void> {
  // A result may only follow the answers to all of the call's syscalls.
  while (call.pending.size) {
    await Promise.allSettled([...call.pending.values()].map((p) => p.promise));
  }
}

function endCall(call: CallState): void {
  call.ended = true;
  if (call.timers.size || call.intervals.size) {
    const { clearTimeout, clearInterval } = timers();
    for (const t of call.timers) clearTimeout(t);
    for (const t of call.intervals) clearInterval(t);
  }
  if (current === call) current = null;
}

function startCall(id: number): CallState {
  const call: CallState = {
    id,
    seq: 0,
    pending: new Map(),
    waits: 0,
    timers: new Set(),
    intervals: new Set(),
    ended: false,
    cancelled: false,
  };
  current = call;
  return call;
}

async function entryOf(tool: string): Promise<NonNullable<ToolEntry["run"]>> {
  const entry = tools.get(tool);
  if (entry === undefined) throw new errors.NotFound(`tool ${tool} is not loaded`);
  if (entry.run === undefined) {
    const mod = await entry.module;
    const found = typeof mod.default === "function" ? mod.default : mod.run;
    if (typeof found !== "function") {
      throw new errors.InvalidArgument(
        `tool ${tool} must export a run function (export default async function run(args, libos))`,
      );
    }
    entry.run = found as ToolEntry["run"];
  }
  return entry.run!;
}

// A registration checked in the sandbox that will run the tool: import it (its top-level code
// runs, as it would before a first call, under a call state of its own, so timers it sets end
// with the check) and find its run function, without running it. Any failure is the tool's:
// the broker kills this sandbox then, so nothing the failed module left can serve anyone.
async function runCheck(msg: Extract<Message, { t: "check" }>): Promise<void> {
  serving++;
  try {
    write(await checkFrame(msg));
  } finally {
    serving--;
  }
}

async function checkFrame(msg: Extract<Message, { t: "check" }>): Promise<Uint8Array> {
  const call = startCall(msg.id);
  let frame: Uint8Array;
  try {
    await entryOf(msg.tool);
    frame = encodeFrame({ t: "result", id: call.id, value: { entry: "run" } });
  } catch (e) {
    // The runtime's own refusals name the tool; what the import threw is the tool's.
    let message = e instanceof errors.LibosError ? e.message : `tool ${msg.tool}: ${toolError(e)[1]}`;
    if (message.length > MAX_MESSAGE_CHARS) message = message.slice(0, MAX_MESSAGE_CHARS) + "…";
    frame = encodeFrame({ t: "error", id: call.id, code: "INVALID_ARGUMENT", message });
  }
  endCall(call);
  // Once through the event loop (the module's timers cleared) before answering: a chain of
  // microtasks the module left going, which never yields to it, would spin in this sandbox,
  // idle for the broker, for good; it keeps the answer from leaving instead, and the check's
  // deadline kills the sandbox.
  await eventLoopTurn();
  return frame;
}

// One turn of the event loop: a message to ourselves on a channel only the runtime holds.
// Its delivery is a task, so it waits for the microtask queue to drain, like a timer; a
// timer of 0 ms waits for Deno's timer tick too (about 2 ms), this does not.
let turnPort: MessagePort | null = null;
const turnWaiters: (() => void)[] = [];

function eventLoopTurn(): Promise<void> {
  try {
    if (turnPort === null) {
      // Made after lockdown, from frozen built-ins no tool can have changed.
      const channel = new MessageChannel();
      channel.port1.onmessage = () => turnWaiters.shift()?.();
      turnPort = channel.port2;
    }
    const port = turnPort;
    return new Promise((resolve) => {
      turnWaiters.push(resolve);
      port.postMessage(null);
    });
  } catch {
    return new Promise((resolve) => timers().setTimeout(resolve, 0)); // slower, as good
  }
}

// A spare waits, started, for its first tool: meanwhile, once the broker says nobody is waiting
// for it (a `warm` frame), it goes once through what the first tool's check and call will (the
// frames' decoding and checking, the load, the check and the call themselves, on a tool of its
// own), so that they do not pay for it: the first decode of a frame costs about 0.5 ms, and each
// function's first run compiles it. A sandbox wanted at once (a cold start, or a spare a check
// was already waiting for) gets no `warm` frame: its first real frame would otherwise wait for
// the round under way, and the warm-up's own import (issue #17: about 3 ms of the main thread's
// CPU before a cold start's first answer).
// The module is the same for every spare: one new to Deno's cache each time would also warm the
// cache's first write (about 1 ms), but would leave a compiled file and a code-cache entry in
// the service's DENO_DIR per sandbox started, for as long as the broker runs, at a rate a tool
// can drive (every call that hits a limit starts another).
// It goes round the check and the call (each call frame decoded afresh) `WARM_UP_ROUNDS`
// times: once leaves V8 to compile these paths for a higher tier in the background during the
// first real check and call (a few hundred µs of CPU on its worker threads there, and slower
// code on the main thread meanwhile); a dozen rounds has it done before (issue #17: Deno's CPU,
// all threads, for a spare's check and first call went from 3.9-4.5 ms to 3.1-3.6 ms on a
// loaded machine; 4 rounds did not do it). A few ms more of a spare's CPU as it starts.
// Any other frame stops it at the next step (`framesSeen` counts them).
let framesSeen = 0;
const WARM_UP_TOOL = "\0warm-up"; // no frame names it: a tool's name is one the broker checked
const WARM_UP_ROUNDS = 12;
const WARM_UP = "export default function run(_args: unknown, _libos: unknown): null { return null; }";

let warmed = false;

async function warmUp(): Promise<void> {
  if (framesSeen || warmed) return;
  warmed = true;
  serving++;
  try {
    await warmUpRounds();
  } finally {
    serving--;
  }
}

async function warmUpRounds(): Promise<void> {
  const frames = new FrameDecoder();
  frames.feed(encodeFrame({ t: "load", tool: WARM_UP_TOOL, lang: "ts", hash: "sha256:-", source: WARM_UP }));
  frames.feed(encodeFrame({ t: "check", id: 0, tool: WARM_UP_TOOL }));
  const [load, check] = [frames.next(), frames.next()].map((d) => parseMessage(d!));
  // A check or a call makes itself the current call: only while no frame has come (a real
  // call may be under way after each await), and the answers go nowhere.
  loadTool(load as Extract<Message, { t: "load" }>);
  try {
    for (let round = 0; round < WARM_UP_ROUNDS; round++) {
      if (framesSeen) return;
      await checkFrame(check as Extract<Message, { t: "check" }>);
      if (framesSeen) return;
      await callFrame(warmUpCall(frames) as Extract<Message, { t: "call" }>);
    }
  } finally {
    tools.delete(WARM_UP_TOOL);
  }
}

function warmUpCall(frames: FrameDecoder): Message {
  frames.feed(encodeFrame({ t: "call", id: 0, tool: WARM_UP_TOOL, args: { a: [1, "b", null] } }));
  return parseMessage(frames.next()!);
}

async function runCall(msg: Extract<Message, { t: "call" }>): Promise<void> {
  serving++;
  try {
    write(await callFrame(msg));
  } finally {
    serving--;
  }
}

async function callFrame(msg: Extract<Message, { t: "call" }>): Promise<Uint8Array> {
  const call = startCall(msg.id);
  let frame: Uint8Array;
  try {
    const fn = await entryOf(msg.tool);
    const value = await fn!(msg.args, makeLibos(syscallFor(call)));
    if (call.pending.size) await drain(call);
    if (call.cancelled) throw new errors.Cancelled("call cancelled");
    if (typeof value === "function" || typeof value === "symbol") {
      throw new ProtocolFault(`a ${typeof value} cannot be sent`);
    }
    frame = encodeFrame({ t: "result", id: call.id, value: value === undefined ? null : value });
  } catch (e) {
    if (call.pending.size) await drain(call);
    let [code, message] = toolError(e);
    if (call.cancelled) [code, message] = ["CANCELLED", "call cancelled"];
    if (message.length > MAX_MESSAGE_CHARS) message = message.slice(0, MAX_MESSAGE_CHARS) + "…";
    frame = encodeFrame({ t: "error", id: call.id, code, message });
  }
  endCall(call);
  return frame;
}

function loadTool(msg: Extract<Message, { t: "load" }>): void {
  const url = "data:application/typescript;charset=utf-8," + encodeURIComponent(msg.source);
  const module = import(url) as Promise<Record<string, unknown>>;
  module.catch(() => {}); // reported by the call that needs it
  tools.set(msg.tool, { hash: msg.hash, module });
}

function handle(msg: Message): void {
  if (msg.t === "warm") {
    warmUp().catch(() => {});
    return;
  }
  framesSeen++;
  switch (msg.t) {
    case "load":
      loadTool(msg);
      return;
    case "call":
      runCall(msg);
      return;
    case "check":
      runCheck(msg);
      return;
    case "sysret": {
      const call = current;
      const pending = call !== null && call.id === msg.id ? call.pending.get(msg.seq) : undefined;
      if (call === null || pending === undefined) fatal(`sysret for (${msg.id}, ${msg.seq}), not pending`);
      call.pending.delete(msg.seq);
      if (pending.waits) call.waits--;
      if (msg.ok) pending.resolve(msg.value);
      else pending.reject(errors.errorFromWire(msg.code, msg.message));
      return;
    }
    case "cancel":
      if (current !== null && current.id === msg.id) current.cancelled = true;
      return;
    default:
      fatal(`a sandbox does not receive ${msg.t}`);
  }
}

// -- console, timers, stray errors ------------------------------------------------------------

function format(args: unknown[]): string {
  let text = args.map((a) => (typeof a === "string" ? a : inspect(a, { colors: false, depth: 4 }))).join(" ");
  if (text.length > MAX_LOG_CHARS) text = text.slice(0, MAX_LOG_CHARS) + `…(+${text.length - MAX_LOG_CHARS} chars)`;
  return text;
}

function log(level: string, args: unknown[]): void {
  const call = current;
  if (call === null || call.ended) return; // nobody to attribute it to: dropped
  let text: string;
  try {
    text = format(args);
  } catch {
    text = "(unprintable)";
  }
  send({ t: "log", id: call.id, level, text });
}

const counts = new Map<string, number>();
const console_ = {
  log: (...a: unknown[]) => log("info", a),
  info: (...a: unknown[]) => log("info", a),
  debug: (...a: unknown[]) => log("debug", a),
  trace: (...a: unknown[]) => log("debug", a),
  warn: (...a: unknown[]) => log("warn", a),
  error: (...a: unknown[]) => log("error", a),
  dir: (...a: unknown[]) => log("info", a),
  dirxml: (...a: unknown[]) => log("info", a),
  table: (...a: unknown[]) => log("info", a),
  assert: (cond: unknown, ...a: unknown[]) => {
    if (!cond) log("error", ["Assertion failed", ...a]);
  },
  count: (label = "default") => {
    const n = (counts.get(label) ?? 0) + 1;
    counts.set(label, n);
    log("info", [`${label}: ${n}`]);
  },
  countReset: (label = "default") => void counts.delete(label),
  group: (...a: unknown[]) => (a.length ? log("info", a) : undefined),
  groupCollapsed: (...a: unknown[]) => (a.length ? log("info", a) : undefined),
  groupEnd: () => {},
  time: () => {},
  timeEnd: () => {},
  timeLog: () => {},
  clear: () => {},
};
Object.defineProperty(globalThis, "console", { value: Object.freeze(console_), writable: false, configurable: false });

// Timers belong to the call that set them and are cleared when it ends.
const g = globalThis as unknown as Record<string, unknown>;
g.setTimeout = (fn: unknown, ms?: number, ...rest: unknown[]) => {
  const id = timers().setTimeout(fn, ms, ...rest);
  current?.timers.add(id);
  return id;
};
g.setInterval = (fn: unknown, ms?: number, ...rest: unknown[]) => {
  const id = timers().setInterval(fn, ms, ...rest);
  current?.intervals.add(id);
  return id;
};

// An uncaught error or rejection would end the Deno process; report it instead. These
// listeners come first, and no listener a tool adds sees the event (it could carry another
// call's objects).
globalThis.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  e.stopImmediatePropagation();
  log("error", ["unhandled rejection:", e.reason]);
});
globalThis.addEventListener("error", (e) => {
  e.preventDefault();
  e.stopImmediatePropagation();
  log("error", ["uncaught error:", e.error ?? e.message]);
});

// -- lockdown: from here on no built-in can be changed ----------------------------------------

// Deno's core captures its native queueMicrotask on the first call, deleting it from an
// internal object: after lockdown that object is frozen and the capture throws (message ports
// use it, `eventLoopTurn` below among them). It is made now.
queueMicrotask(() => {});
lockdown(["TextEncoder", "TextDecoder"], [errors.ERRORS, errors.ERRORS_BY_NAME, LIBOS_PROTOTYPE,
  ...RUNTIME_MODULES]);

// -- main loop --------------------------------------------------------------------------------

// What is under way: calls and checks until their answer is written, and the warm-up. While
// nothing is, the event loop has nothing to run (a call's timers end with it), so the next frame
// is waited for in a blocking read; so is a syscall's answer that a call alone waits for
// (`awaitsAnswersAlone`). An async read of stdin goes through a thread of Deno's blocking pool
// and back: a persistent raw Deno's round trip answered 35-50 µs later than with a blocking one
// (issue #17: 77-102 µs against 44-53, 3 runs). Anything else (timers, imports) needs the event
// loop: then the broker's bytes are read through it.
let serving = 0;
// Microtask hops allowed a call to end before the next read is chosen: an async tool that
// waits for nothing (no syscall, timer or import) ends within a few; one that waits is read
// for through the event loop, as before.
const SETTLE_HOPS = 16;

async function readChunk(into: Uint8Array): Promise<number | null> {
  for (let hop = 0; hop < SETTLE_HOPS && serving > 0; hop++) await null;
  return serving === 0 || awaitsAnswersAlone() ? readStdinSync(into) : await readStdin(into);
}

// The syscalls the broker answers by themselves (not blocking: no receive, wait, sleep or
// question). A blocking one's answer may wait for what the call does next (a receive for
// the send it makes after some work of its own): blocked in read(2), that work never ran,
// and the call hung until its deadline. A name not in the table counts as blocking.
const QUICK = new Set(SYSCALLS.filter((s) => !s.blocking).map((s) => s.name));

/** The one call under way waits for its syscalls' answers, which come on stdin, none of them
 * a blocking syscall's, and set no timer: blocking until they come keeps nothing of its own
 * from running for long. (What else it may await meanwhile, an import say, goes on once an
 * answer is read: the broker answers each of them by itself, or kills the sandbox at the
 * call's deadline.) */
function awaitsAnswersAlone(): boolean {
  const call = current;
  return serving === 1 && call !== null && call.pending.size > 0 && call.waits === 0 &&
    call.timers.size === 0 && call.intervals.size === 0;
}

send({ t: "hello", v: PROTOCOL_VERSION, kind: "deno" });
const decoder = new FrameDecoder();
const buf = new Uint8Array(1 << 16);
while (true) {
  let n: number | null;
  try {
    n = await readChunk(buf);
  } catch (e) {
    fatal(`stdin: ${e}`);
  }
  if (n === null) break;
  try {
    decoder.feed(buf.slice(0, n));
    for (let d = decoder.next(); d !== null; d = decoder.next()) handle(parseMessage(d));
  } catch (e) {
    fatal(`bad frame from the broker: ${(e as Error).message}`);
  }
}
exit(0);
