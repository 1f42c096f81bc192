// The shared frame vectors (tests/vectors/frames.json), checked by the TypeScript codec.
// Run by tests/sandboxes/test_deno_runtime.py:
//   deno test --no-prompt --no-remote --no-npm --no-config ts-runtime/frames_test.ts
// The JSON is a static import, so the test needs no permission either.

import vectors from "../tests/vectors/frames.json" with { type: "json" };
import { parseMessage } from "./messages.ts";
import { DEFAULT_LIMITS, type Decoded, encodeFrame, F64, FrameDecoder, type Limits, ProtocolFault } from "./msgpack.ts";

interface Vector {
  name: string;
  hex: string;
  limits?: Partial<Limits>;
  message?: unknown;
  canonical?: boolean;
  error?: string;
}

function fromHex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function toHex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function tag(v: Record<string, unknown>): [string, unknown] | null {
  const keys = Object.keys(v);
  return keys.length === 1 && keys[0].startsWith("$") ? [keys[0], v[keys[0]]] : null;
}

function sameFloat(a: number, text: string): boolean {
  const b = Number(text);
  return Number.isNaN(a) ? Number.isNaN(b) : Object.is(a, b);
}

/** Does a decoded (tagged) value equal the JSON form of the README? Maps compare as maps. */
function matches(actual: unknown, expected: unknown, literal = false): boolean {
  if (expected === null || typeof expected === "boolean" || typeof expected === "string") {
    return actual === expected;
  }
  if (typeof expected === "number") return typeof actual === "number" && actual === expected;
  if (Array.isArray(expected)) {
    return Array.isArray(actual) && actual.length === expected.length &&
      expected.every((e, i) => matches(actual[i], e));
  }
  const exp = expected as Record<string, unknown>;
  const t = literal ? null : tag(exp);
  if (t !== null) {
    const [k, v] = t;
    if (k === "$float") return actual instanceof F64 && sameFloat(actual.value, v as string);
    if (k === "$int") return typeof actual === "bigint" && actual === BigInt(v as string);
    if (k === "$bin") return actual instanceof Uint8Array && toHex(actual) === v;
    if (k === "$map") return matches(actual, v, true);
    throw new Error(`unknown tag ${k}`);
  }
  if (typeof actual !== "object" || actual === null || Array.isArray(actual) || actual instanceof F64 ||
    actual instanceof Uint8Array) return false;
  const act = actual as Record<string, unknown>;
  const ak = Object.keys(act).sort();
  const ek = Object.keys(exp).sort();
  return ak.length === ek.length && ak.every((k, i) => k === ek[i] && matches(act[k], exp[k]));
}

/** The JSON form back to values the encoder writes exactly (Map keeps the wire's key order). */
function fromJson(v: unknown, literal = false): unknown {
  if (v === null || typeof v !== "object") return v;
  if (Array.isArray(v)) return v.map((x) => fromJson(x));
  const obj = v as Record<string, unknown>;
  const t = literal ? null : tag(obj);
  if (t !== null) {
    const [k, x] = t;
    if (k === "$float") return new F64(Number(x));
    if (k === "$int") return BigInt(x as string);
    if (k === "$bin") return fromHex(x as string);
    if (k === "$map") return fromJson(x, true);
  }
  const m = new Map<string, unknown>();
  for (const key of Object.keys(obj)) m.set(key, fromJson(obj[key]));
  return m;
}

function decodeAll(v: Vector): Decoded[] {
  const dec = new FrameDecoder({ ...DEFAULT_LIMITS, ...(v.limits ?? {}) });
  dec.feed(fromHex(v.hex));
  const frames: Decoded[] = [];
  for (let d = dec.next(true); d !== null; d = dec.next(true)) {
    parseMessage(d);
    frames.push(d);
  }
  if (dec.buffered !== 0) throw new ProtocolFault("input ended inside a frame");
  return frames;
}

const all = (vectors as { vectors: Vector[] }).vectors;

Deno.test("every vector is checked", () => {
  if (all.length < 50) throw new Error(`only ${all.length} vectors`);
});

for (const v of all) {
  Deno.test(`vector: ${v.name}`, () => {
    if (v.error !== undefined) {
      let threw: unknown = null;
      try {
        decodeAll(v);
      } catch (e) {
        threw = e;
      }
      if (!(threw instanceof ProtocolFault)) {
        throw new Error(`expected a ProtocolFault, got ${threw === null ? "success" : String(threw)}`);
      }
      return;
    }
    const frames = decodeAll(v);
    if (frames.length !== 1) throw new Error(`expected one frame, got ${frames.length}`);
    if (!matches(frames[0].value, v.message)) {
      throw new Error(`decoded ${Deno.inspect(frames[0].value)} != ${JSON.stringify(v.message)}`);
    }
    if (v.canonical) {
      const limits = { ...DEFAULT_LIMITS, ...(v.limits ?? {}) };
      const got = toHex(encodeFrame(fromJson(v.message) as Map<string, unknown>, limits));
      if (got !== v.hex) throw new Error(`encoded ${got}\n   wanted ${v.hex}`);
    }
  });
}

Deno.test("plain objects encode like maps; -0 and non-integers stay floats", () => {
  const a = toHex(encodeFrame({ t: "result", id: 1, value: [1, 1.5, -0, 2 ** 53] }));
  const b = toHex(encodeFrame(new Map<string, unknown>([
    ["t", "result"],
    ["id", 1],
    ["value", [1, new F64(1.5), new F64(-0), new F64(2 ** 53)]],
  ])));
  if (a !== b) throw new Error(`${a} != ${b}`);
});

Deno.test("__proto__ decodes as an own key, never as the prototype", () => {
  const frame = encodeFrame(new Map<string, unknown>([
    ["t", "call"],
    ["id", 1],
    ["tool", "x"],
    ["args", new Map([["__proto__", new Map([["admin", true]])]])],
  ]));
  const dec = new FrameDecoder();
  dec.feed(frame);
  const msg = parseMessage(dec.next()!) as { args: Record<string, unknown> };
  if (Object.getPrototypeOf(msg.args) !== Object.prototype) throw new Error("prototype changed");
  if (!Object.hasOwn(msg.args, "__proto__")) throw new Error("key lost");
  if ((msg.args as { admin?: unknown }).admin !== undefined) throw new Error("prototype polluted");
});

Deno.test("values a decoder would refuse are not encoded", () => {
  for (const bad of [{ t: "result", id: 1, value: Symbol("x") }, { t: "result", id: 1, value: "\ud800" }]) {
    let threw = false;
    try {
      encodeFrame(bad as Record<string, unknown>);
    } catch (e) {
      threw = e instanceof ProtocolFault;
    }
    if (!threw) throw new Error(`encoded ${String(bad.value)}`);
  }
  let deep: unknown = [];
  for (let i = 0; i < 40; i++) deep = [deep];
  let threw = false;
  try {
    encodeFrame({ t: "result", id: 1, value: deep });
  } catch (e) {
    threw = e instanceof ProtocolFault;
  }
  if (!threw) throw new Error("encoded nesting beyond max_depth");
});
