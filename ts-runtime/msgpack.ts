// A small, strict msgpack codec for the broker<->sandbox channel (it imports only the
// protocol's bounds, generated from broker/protocol/limits.py).
//
// Decoding is as strict as broker/protocol/frames.py: map keys are str and unique, ext types
// (the timestamp included) are refused, str is valid UTF-8, nesting, every length and the
// count of containers and values are bounded before anything is allocated for them.
// Encoding writes the minimal ("canonical") form msgpack-python writes with use_bin_type=True.

import { DEFAULT_LIMITS, type Limits } from "./limits.gen.ts";

export { DEFAULT_LIMITS, type Limits };

/** Malformed or over-limit bytes, or a value that cannot be sent: PROTOCOL_ERROR. */
export class ProtocolFault extends Error {
  readonly code = "PROTOCOL_ERROR";
  constructor(message: string) {
    super(message);
    this.name = "ProtocolError";
  }
}

/** An explicit float64 (so 3.0 stays a float); the decoder makes these in tagged mode. */
export class F64 {
  constructor(readonly value: number) {}
}

const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const encoder = new TextEncoder();

function defineKey(obj: Record<string, unknown>, key: string, value: unknown): void {
  if (key === "__proto__") {
    // An ordinary key on the wire: define it, never assign it (assignment sets the prototype).
    Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    obj[key] = value;
  }
}

export interface Decoded {
  value: unknown;
  /** Keys of the top-level map whose values were encoded as floats. */
  topFloats: Set<string>;
}

/** Counts a frame's containers and the values in them against `max_items`. */
function countItems(limits: Limits, items: number, n: number): number {
  items += n + 1;
  if (items > limits.max_items) {
    throw new ProtocolFault(`more than ${limits.max_items} containers and values in one frame`);
  }
  return items;
}

class Decoder {
  pos = 0;
  items = 0;
  readonly view: DataView;
  readonly topFloats = new Set<string>();
  constructor(readonly buf: Uint8Array, readonly limits: Limits, readonly tagged: boolean) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  need(n: number): void {
    if (this.pos + n > this.buf.length) throw new ProtocolFault("truncated msgpack");
  }

  u8(): number {
    this.need(1);
    return this.buf[this.pos++];
  }
  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  int64(signed: boolean): number | bigint {
    this.need(8);
    const v = signed ? this.view.getBigInt64(this.pos) : this.view.getBigUint64(this.pos);
    this.pos += 8;
    return v <= BigInt(MAX_SAFE) && v >= -BigInt(MAX_SAFE) ? Number(v) : v;
  }

  float(v: number): unknown {
    return this.tagged ? new F64(v) : v;
  }

  str(n: number): string {
    if (n > this.limits.max_str_len) throw new ProtocolFault(`str longer than ${this.limits.max_str_len} bytes`);
    this.need(n);
    const start = this.pos;
    this.pos += n;
    if (n <= 24) {
      // ASCII fast path for short strings (most keys)
      let out = "";
      let ascii = true;
      for (let i = start; i < start + n; i++) {
        const c = this.buf[i];
        if (c > 0x7f) {
          ascii = false;
          break;
        }
        out += String.fromCharCode(c);
      }
      if (ascii) return out;
    }
    try {
      return utf8.decode(this.buf.subarray(start, start + n));
    } catch {
      throw new ProtocolFault("invalid UTF-8 in str");
    }
  }

  bin(n: number): Uint8Array {
    if (n > this.limits.max_bin_len) throw new ProtocolFault(`bin longer than ${this.limits.max_bin_len} bytes`);
    this.need(n);
    const out = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  array(n: number, depth: number): unknown[] {
    if (depth > this.limits.max_depth) throw new ProtocolFault(`nesting deeper than ${this.limits.max_depth}`);
    if (n > this.limits.max_array_len) throw new ProtocolFault(`array longer than ${this.limits.max_array_len}`);
    if (n > this.buf.length - this.pos) throw new ProtocolFault("array length beyond the body");
    this.items = countItems(this.limits, this.items, n);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.value(depth);
    return out;
  }

  map(n: number, depth: number): Record<string, unknown> {
    if (depth > this.limits.max_depth) throw new ProtocolFault(`nesting deeper than ${this.limits.max_depth}`);
    if (n > this.limits.max_map_len) throw new ProtocolFault(`map longer than ${this.limits.max_map_len}`);
    if (2 * n > this.buf.length - this.pos) throw new ProtocolFault("map length beyond the body");
    this.items = countItems(this.limits, this.items, n);
    const out: Record<string, unknown> = {};
    const seen = new Set<string>();
    for (let i = 0; i < n; i++) {
      const key = this.key();
      if (seen.has(key)) throw new ProtocolFault("duplicate map key");
      seen.add(key);
      const before = this.pos;
      const value = this.value(depth);
      if (depth === 1 && (this.buf[before] === 0xca || this.buf[before] === 0xcb)) this.topFloats.add(key);
      defineKey(out, key, value);
    }
    return out;
  }

  key(): string {
    const b = this.u8();
    if (b >= 0xa0 && b <= 0xbf) return this.str(b & 0x1f);
    if (b === 0xd9) return this.str(this.u8());
    if (b === 0xda) return this.str(this.u16());
    if (b === 0xdb) return this.str(this.u32());
    throw new ProtocolFault("map key must be a str");
  }

  // `depth` is the depth of the container holding this value (the top-level map is 1).
  value(depth: number): unknown {
    const b = this.u8();
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if (b >= 0xa0 && b <= 0xbf) return this.str(b & 0x1f);
    if (b >= 0x90 && b <= 0x9f) return this.array(b & 0x0f, depth + 1);
    if (b >= 0x80 && b <= 0x8f) return this.map(b & 0x0f, depth + 1);
    switch (b) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
        return this.bin(this.u8());
      case 0xc5:
        return this.bin(this.u16());
      case 0xc6:
        return this.bin(this.u32());
      case 0xca: {
        this.need(4);
        const v = this.view.getFloat32(this.pos);
        this.pos += 4;
        return this.float(v);
      }
      case 0xcb: {
        this.need(8);
        const v = this.view.getFloat64(this.pos);
        this.pos += 8;
        return this.float(v);
      }
      case 0xcc:
        return this.u8();
      case 0xcd:
        return this.u16();
      case 0xce:
        return this.u32();
      case 0xcf:
        return this.int64(false);
      case 0xd0: {
        const v = this.u8();
        return v > 0x7f ? v - 0x100 : v;
      }
      case 0xd1: {
        const v = this.u16();
        return v > 0x7fff ? v - 0x10000 : v;
      }
      case 0xd2: {
        this.need(4);
        const v = this.view.getInt32(this.pos);
        this.pos += 4;
        return v;
      }
      case 0xd3:
        return this.int64(true);
      case 0xd9:
        return this.str(this.u8());
      case 0xda:
        return this.str(this.u16());
      case 0xdb:
        return this.str(this.u32());
      case 0xdc:
        return this.array(this.u16(), depth + 1);
      case 0xdd:
        return this.array(this.u32(), depth + 1);
      case 0xde:
        return this.map(this.u16(), depth + 1);
      case 0xdf:
        return this.map(this.u32(), depth + 1);
      case 0xc1:
        throw new ProtocolFault("reserved byte 0xc1");
      default:
        throw new ProtocolFault(`ext type (0x${b.toString(16)}) is not allowed`);
    }
  }
}

/** Decode one frame body: exactly one msgpack value, which must be a map. */
export function decodeBody(body: Uint8Array, limits: Limits = DEFAULT_LIMITS, tagged = false): Decoded {
  if (body.length > limits.max_frame_bytes) throw new ProtocolFault("frame too long");
  const d = new Decoder(body, limits, tagged);
  if (body.length === 0) throw new ProtocolFault("empty frame body");
  const first = body[0];
  if (!((first >= 0x80 && first <= 0x8f) || first === 0xde || first === 0xdf)) {
    throw new ProtocolFault("a frame body must be a map");
  }
  const value = d.value(0);
  if (d.pos !== body.length) throw new ProtocolFault("trailing bytes in frame body");
  return { value, topFloats: d.topFloats };
}

/** Splits a byte stream into frame bodies; a declared length over the limit fails at once. */
export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  private size = 0;
  private broken: ProtocolFault | null = null;
  constructor(readonly limits: Limits = DEFAULT_LIMITS) {}

  get buffered(): number {
    return this.size;
  }

  feed(data: Uint8Array): void {
    if (this.broken) throw new ProtocolFault(`stream already broken: ${this.broken.message}`);
    if (data.length === 0) return;
    this.chunks.push(data);
    this.size += data.length;
    if (this.size >= 4) this.bodyLength();
  }

  private flatten(): Uint8Array {
    if (this.chunks.length !== 1) {
      const all = new Uint8Array(this.size);
      let off = 0;
      for (const c of this.chunks) {
        all.set(c, off);
        off += c.length;
      }
      this.chunks = [all];
    }
    return this.chunks[0];
  }

  private bodyLength(): number {
    let buf = this.chunks[0];
    if (buf.length < 4) buf = this.flatten();
    const n = ((buf[0] << 24) >>> 0) + (buf[1] << 16) + (buf[2] << 8) + buf[3];
    if (n > this.limits.max_frame_bytes) {
      this.broken = new ProtocolFault(`declared frame length ${n} exceeds ${this.limits.max_frame_bytes}`);
      this.chunks = [];
      this.size = 0;
      throw this.broken;
    }
    return n;
  }

  /** The next complete frame's decoded body, or null until more bytes arrive. */
  next(tagged = false): Decoded | null {
    if (this.broken) throw new ProtocolFault(`stream already broken: ${this.broken.message}`);
    if (this.size < 4) return null;
    const n = this.bodyLength();
    if (this.size < 4 + n) return null;
    const buf = this.flatten();
    const body = buf.subarray(4, 4 + n);
    const rest = buf.subarray(4 + n);
    this.chunks = rest.length ? [rest] : [];
    this.size = rest.length;
    try {
      return decodeBody(body, this.limits, tagged);
    } catch (e) {
      this.broken = e instanceof ProtocolFault ? e : new ProtocolFault(String(e));
      this.chunks = [];
      this.size = 0;
      throw this.broken;
    }
  }
}

// -- encoding ---------------------------------------------------------------------------

class Encoder {
  buf = new Uint8Array(256);
  view = new DataView(this.buf.buffer);
  pos = 4; // room for the frame's length prefix
  items = 0;
  constructor(readonly limits: Limits) {}

  ensure(n: number): void {
    const need = this.pos + n;
    if (need <= this.buf.length) return;
    if (need > this.limits.max_frame_bytes + 4) {
      throw new ProtocolFault(`frame larger than ${this.limits.max_frame_bytes} bytes`);
    }
    let size = this.buf.length * 2;
    while (size < need) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }

  byte(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }

  head(small: number, smallMax: number, b8: number | null, b16: number, b32: number, n: number): void {
    if (n <= smallMax) this.byte(small | n);
    else if (b8 !== null && n <= 0xff) {
      this.ensure(2);
      this.buf[this.pos++] = b8;
      this.buf[this.pos++] = n;
    } else if (n <= 0xffff) {
      this.ensure(3);
      this.buf[this.pos++] = b16;
      this.view.setUint16(this.pos, n);
      this.pos += 2;
    } else {
      this.ensure(5);
      this.buf[this.pos++] = b32;
      this.view.setUint32(this.pos, n);
      this.pos += 4;
    }
  }

  int(n: number): void {
    if (n >= 0) {
      if (n <= 0x7f) this.byte(n);
      else if (n <= 0xff) {
        this.ensure(2);
        this.buf[this.pos++] = 0xcc;
        this.buf[this.pos++] = n;
      } else if (n <= 0xffff) {
        this.ensure(3);
        this.buf[this.pos++] = 0xcd;
        this.view.setUint16(this.pos, n);
        this.pos += 2;
      } else if (n <= 0xffffffff) {
        this.ensure(5);
        this.buf[this.pos++] = 0xce;
        this.view.setUint32(this.pos, n);
        this.pos += 4;
      } else this.bigint(BigInt(n));
    } else {
      if (n >= -32) this.byte(n & 0xff);
      else if (n >= -0x80) {
        this.ensure(2);
        this.buf[this.pos++] = 0xd0;
        this.view.setInt8(this.pos++, n);
      } else if (n >= -0x8000) {
        this.ensure(3);
        this.buf[this.pos++] = 0xd1;
        this.view.setInt16(this.pos, n);
        this.pos += 2;
      } else if (n >= -0x80000000) {
        this.ensure(5);
        this.buf[this.pos++] = 0xd2;
        this.view.setInt32(this.pos, n);
        this.pos += 4;
      } else this.bigint(BigInt(n));
    }
  }

  bigint(n: bigint): void {
    if (n >= 0n && n <= 0xffffffffn) return this.int(Number(n));
    if (n < 0n && n >= -0x80000000n) return this.int(Number(n));
    this.ensure(9);
    if (n > 0n) {
      if (n > 0xffffffffffffffffn) throw new ProtocolFault("int beyond 64 bits");
      this.buf[this.pos++] = 0xcf;
      this.view.setBigUint64(this.pos, n);
    } else {
      if (n < -0x8000000000000000n) throw new ProtocolFault("int beyond 64 bits");
      this.buf[this.pos++] = 0xd3;
      this.view.setBigInt64(this.pos, n);
    }
    this.pos += 8;
  }

  float(x: number): void {
    this.ensure(9);
    this.buf[this.pos++] = 0xcb;
    this.view.setFloat64(this.pos, x);
    this.pos += 8;
  }

  str(s: string): void {
    // UTF-8 never takes fewer bytes than UTF-16 code units, so this bound is safe.
    if (s.length > this.limits.max_str_len) {
      throw new ProtocolFault(`str longer than ${this.limits.max_str_len} bytes`);
    }
    let ascii = s.length < 64;
    if (ascii) {
      for (let i = 0; i < s.length; i++) {
        if (s.charCodeAt(i) > 0x7f) {
          ascii = false;
          break;
        }
      }
    }
    if (ascii) {
      this.head(0xa0, 31, 0xd9, 0xda, 0xdb, s.length);
      this.ensure(s.length);
      for (let i = 0; i < s.length; i++) this.buf[this.pos++] = s.charCodeAt(i);
      return;
    }
    if (!s.isWellFormed()) throw new ProtocolFault("str with a lone surrogate cannot be sent");
    const bytes = encoder.encode(s);
    if (bytes.length > this.limits.max_str_len) throw new ProtocolFault(`str longer than ${this.limits.max_str_len} bytes`);
    this.head(0xa0, 31, 0xd9, 0xda, 0xdb, bytes.length);
    this.ensure(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
  }

  bin(b: Uint8Array): void {
    if (b.length > this.limits.max_bin_len) throw new ProtocolFault(`bin longer than ${this.limits.max_bin_len} bytes`);
    this.head(0, -1, 0xc4, 0xc5, 0xc6, b.length);
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  // `depth`: the depth this value would have if it is a container (top-level map = 1).
  value(v: unknown, depth: number): void {
    switch (typeof v) {
      case "string":
        return this.str(v);
      case "number":
        if (Number.isSafeInteger(v) && !Object.is(v, -0)) return this.int(v);
        return this.float(v);
      case "boolean":
        return this.byte(v ? 0xc3 : 0xc2);
      case "bigint":
        return this.bigint(v);
      case "undefined":
        return this.byte(0xc0);
      case "object":
        break;
      default:
        throw new ProtocolFault(`a ${typeof v} cannot be sent`);
    }
    if (v === null) return this.byte(0xc0);
    if (v instanceof F64) return this.float(v.value);
    if (v instanceof Uint8Array) return this.bin(v);
    if (v instanceof ArrayBuffer) return this.bin(new Uint8Array(v));
    if (depth > this.limits.max_depth) throw new ProtocolFault(`nesting deeper than ${this.limits.max_depth}`);
    if (Array.isArray(v)) {
      if (v.length > this.limits.max_array_len) throw new ProtocolFault(`array longer than ${this.limits.max_array_len}`);
      this.items = countItems(this.limits, this.items, v.length);
      this.head(0x90, 15, null, 0xdc, 0xdd, v.length);
      for (let i = 0; i < v.length; i++) this.value(v[i], depth + 1);
      return;
    }
    if (v instanceof Map) {
      if (v.size > this.limits.max_map_len) throw new ProtocolFault(`map longer than ${this.limits.max_map_len}`);
      this.items = countItems(this.limits, this.items, v.size);
      this.head(0x80, 15, null, 0xde, 0xdf, v.size);
      for (const [k, x] of v) {
        if (typeof k !== "string") throw new ProtocolFault("map keys must be strings");
        this.str(k);
        this.value(x, depth + 1);
      }
      return;
    }
    if (v instanceof Set) return this.value([...v], depth);
    const toJSON = (v as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === "function") return this.value(toJSON.call(v), depth);
    if (ArrayBuffer.isView(v)) {
      return this.bin(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
    }
    const obj = v as Record<string, unknown>;
    const keys = Object.keys(obj).filter((k) => obj[k] !== undefined && typeof obj[k] !== "function");
    if (keys.length > this.limits.max_map_len) throw new ProtocolFault(`map longer than ${this.limits.max_map_len}`);
    this.items = countItems(this.limits, this.items, keys.length);
    this.head(0x80, 15, null, 0xde, 0xdf, keys.length);
    for (const k of keys) {
      this.str(k);
      this.value(obj[k], depth + 1);
    }
  }
}

/** The frame (length prefix + body) for a map; ProtocolFault if the peer could not accept it. */
export function encodeFrame(msg: Record<string, unknown> | Map<string, unknown>, limits: Limits = DEFAULT_LIMITS): Uint8Array {
  const e = new Encoder(limits);
  e.value(msg, 1);
  const n = e.pos - 4;
  if (n > limits.max_frame_bytes) throw new ProtocolFault(`frame of ${n} bytes exceeds ${limits.max_frame_bytes}`);
  e.view.setUint32(0, n);
  return e.buf.subarray(0, e.pos);
}
