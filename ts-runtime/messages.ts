// The message types carried in frames, validated exactly like broker/protocol/messages.py:
// "t" names the type, the keys are exactly the listed fields, ids and seqs are ints (never
// floats or bools) in [0, 2**53), error codes come from the typed error set.

import { isErrorCode } from "./errors.ts";
import { type Decoded, ProtocolFault } from "./msgpack.ts";

export const PROTOCOL_VERSION = 1;
export const SANDBOX_KINDS: readonly string[] = Object.freeze(["deno", "wasm", "pyodide"]);
export const LOG_LEVELS: readonly string[] = Object.freeze(["debug", "info", "warn", "error"]);

export type Message =
  | { t: "hello"; v: number; kind: string }
  | { t: "load"; tool: string; lang: string; hash: string; source: string }
  | { t: "call"; id: number; tool: string; args: unknown }
  | { t: "check"; id: number; tool: string }
  | { t: "syscall"; id: number; seq: number; name: string; args: Record<string, unknown> }
  | { t: "sysret"; id: number; seq: number; ok: true; value: unknown }
  | { t: "sysret"; id: number; seq: number; ok: false; code: string; message: string }
  | { t: "result"; id: number; value: unknown }
  | { t: "error"; id: number; code: string; message: string }
  | { t: "log"; id: number; level: string; text: string }
  | { t: "cancel"; id: number }
  | { t: "warm" };

const FIELDS: Record<string, readonly string[]> = {
  hello: ["v", "kind"],
  load: ["tool", "lang", "hash", "source"],
  call: ["id", "tool", "args"],
  check: ["id", "tool"],
  syscall: ["id", "seq", "name", "args"],
  result: ["id", "value"],
  error: ["id", "code", "message"],
  log: ["id", "level", "text"],
  cancel: ["id"],
  warm: [],
};
const SYSRET_OK = ["id", "seq", "ok", "value"];
const SYSRET_ERR = ["id", "seq", "ok", "code", "message"];
const INT_FIELDS = new Set(["id", "seq", "v"]);
const STR_FIELDS = new Set(["tool", "lang", "hash", "source", "name", "code", "message", "level", "text", "kind"]);

function isMap(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array) &&
    Object.getPrototypeOf(v) === Object.prototype;
}

function shape(obj: Record<string, unknown>, fields: readonly string[], t: string): void {
  const keys = Object.keys(obj);
  if (keys.length !== fields.length + 1) throw new ProtocolFault(`${t}: wrong keys ${JSON.stringify(keys)}`);
  for (const f of fields) if (!Object.hasOwn(obj, f)) throw new ProtocolFault(`${t}: missing ${f}`);
}

/** Validate a decoded frame body and return it as a message; anything else is a fault. */
export function parseMessage(decoded: Decoded): Message {
  const obj = decoded.value;
  if (!isMap(obj)) throw new ProtocolFault("a message must be a map");
  const t = obj.t;
  if (typeof t !== "string") throw new ProtocolFault("message type must be a str");
  let fields: readonly string[];
  if (t === "sysret") {
    if (obj.ok === true) fields = SYSRET_OK;
    else if (obj.ok === false) fields = SYSRET_ERR;
    else throw new ProtocolFault("sysret: ok must be a bool");
  } else {
    const f = Object.hasOwn(FIELDS, t) ? FIELDS[t] : undefined;
    if (f === undefined) throw new ProtocolFault(`unknown message type ${JSON.stringify(t).slice(0, 40)}`);
    fields = f;
  }
  shape(obj, fields, t);
  for (const f of fields) {
    const v = obj[f];
    if (INT_FIELDS.has(f)) {
      if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > Number.MAX_SAFE_INTEGER ||
          decoded.topFloats.has(f)) {
        throw new ProtocolFault(`${f} must be an int in [0, 2**53)`);
      }
    } else if (STR_FIELDS.has(f)) {
      if (typeof v !== "string") throw new ProtocolFault(`${f} must be a str`);
    }
  }
  if (t === "hello" && !SANDBOX_KINDS.includes(obj.kind as string)) throw new ProtocolFault("unknown sandbox kind");
  if (t === "log" && !LOG_LEVELS.includes(obj.level as string)) throw new ProtocolFault("unknown log level");
  if ((t === "error" || (t === "sysret" && obj.ok === false)) && !isErrorCode(obj.code)) {
    throw new ProtocolFault("unknown error code");
  }
  if (t === "syscall" && !isMap(obj.args)) throw new ProtocolFault("syscall args must be a map");
  return obj as unknown as Message;
}
