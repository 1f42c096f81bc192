// The registration checker: `sandboxes/deno_register.py` runs this (with no --allow-* flag,
// like main.ts) to check a TypeScript tool of an image when the image is registered (a tool a
// process registers is checked by a "check" frame in the sandbox that will run it, main.ts).
//
// Same frame protocol as main.ts, but a "call" of a loaded tool does not run it: it imports the
// source in a fresh Worker (a new isolate, so one tool's top-level code cannot touch the check
// of another), and answers {exports, entry} if the module parses (TypeScript syntax included),
// evaluates, and exports a `run` function (default or named); otherwise an INVALID_ARGUMENT
// error carrying the parser's message. The checker holds no authority and serves no process.

import { type Message, parseMessage, PROTOCOL_VERSION } from "./messages.ts";
import { encodeFrame, FrameDecoder } from "./msgpack.ts";

const stdout = Deno.stdout;
const stdin = Deno.stdin;
const exit = Deno.exit;

function send(msg: Record<string, unknown>): void {
  const frame = encodeFrame(msg);
  let off = 0;
  while (off < frame.length) off += stdout.writeSync(frame.subarray(off));
}

// Runs inside the worker: hide what could write to our stdout or stderr (the broker reads
// stderr: a top-level loop wrote 3.8 GB there in 2 s), then import the tool.
const WORKER = `
const post = globalThis.postMessage.bind(globalThis);
const internal = Deno.internal;
for (const k of ["stdout", "stdin", "stderr", "internal"]) { try { delete Deno[k]; } catch {} }
try { delete Deno[internal]; } catch {}
try { Object.defineProperty(globalThis, "process", { value: undefined }); } catch {}
const quiet = () => {};
const fake = {};
for (const k of ["log","info","debug","trace","warn","error","dir","dirxml","table","assert","count",
  "countReset","group","groupCollapsed","groupEnd","time","timeEnd","timeLog","clear"]) fake[k] = quiet;
Object.defineProperty(globalThis, "console", { value: fake, writable: false, configurable: false });
globalThis.postMessage = quiet;
globalThis.addEventListener("unhandledrejection", (e) => e.preventDefault());
globalThis.onmessage = async (e) => {
  globalThis.onmessage = null;
  const nonce = e.data.nonce;
  try {
    const m = await import(e.data.url);
    post({ nonce, ok: true, exports: Object.keys(m).sort(),
      defaultType: typeof m.default, runType: typeof m.run });
  } catch (err) {
    post({ nonce, ok: false, message: String(err && err.message || err) });
  }
};
`;
const workerURL = "data:application/javascript," + encodeURIComponent(WORKER);

const sources = new Map<string, string>();

function checkTool(source: string, ms: number): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    const url = "data:application/typescript;charset=utf-8," + encodeURIComponent(source);
    const nonce = crypto.randomUUID();
    const worker = new Worker(workerURL, { type: "module" });
    const timer = setTimeout(() => {
      worker.terminate();
      resolve({ ok: false, message: `the module did not finish loading within ${ms} ms` });
    }, ms);
    worker.onmessage = (e: MessageEvent) => {
      if (e.data?.nonce !== nonce) return;
      clearTimeout(timer);
      worker.terminate();
      resolve(e.data);
    };
    worker.onerror = (e: ErrorEvent) => {
      e.preventDefault();
      clearTimeout(timer);
      worker.terminate();
      resolve({ ok: false, message: String(e.message) });
    };
    worker.postMessage({ url, nonce });
  });
}

async function runCheck(msg: Extract<Message, { t: "call" }>): Promise<void> {
  const source = sources.get(msg.tool);
  sources.delete(msg.tool);
  if (source === undefined) {
    send({ t: "error", id: msg.id, code: "NOT_FOUND", message: `no source loaded for ${msg.tool}` });
    return;
  }
  const args = msg.args as { timeout_ms?: unknown } | null;
  const ms = typeof args?.timeout_ms === "number" ? args.timeout_ms : 3000;
  const verdict = await checkTool(source, ms);
  if (!verdict.ok) {
    const message = String(verdict.message)
      .replace(/data:application\/typescript;charset=utf-8,[^\s:)]*/g, "<tool>")
      .slice(0, 4096);
    send({ t: "error", id: msg.id, code: "INVALID_ARGUMENT", message: `tool ${msg.tool}: ${message}` });
    return;
  }
  const entry = verdict.defaultType === "function" ? "default" : verdict.runType === "function" ? "run" : null;
  if (entry === null) {
    send({
      t: "error",
      id: msg.id,
      code: "INVALID_ARGUMENT",
      message: `tool ${msg.tool} must export a run function (export default async function run(args, libos))`,
    });
    return;
  }
  send({ t: "result", id: msg.id, value: { exports: verdict.exports, entry } });
}

send({ t: "hello", v: PROTOCOL_VERSION, kind: "deno" });
const decoder = new FrameDecoder();
const buf = new Uint8Array(1 << 16);
while (true) {
  const n = await stdin.read(buf);
  if (n === null) break;
  decoder.feed(buf.slice(0, n));
  for (let d = decoder.next(); d !== null; d = decoder.next()) {
    const msg = parseMessage(d);
    if (msg.t === "load") sources.set(msg.tool, msg.source);
    else if (msg.t === "call") runCheck(msg);
  }
}
exit(0);
