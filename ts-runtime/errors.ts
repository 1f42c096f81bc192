// The typed error set: the classes are generated from broker/errors.py (errors.gen.ts); here
// are the lookups by wire code.

import { BROKER_ONLY, ERRORS, LibosError, ProtocolError } from "./errors.gen.ts";

export * from "./errors.gen.ts";

const hasOwn = Object.hasOwn;

/** Is `code` one of the wire codes? (A function, not an exported Set: a Set stays mutable
 * when frozen, and a tool can import this module.) */
export function isErrorCode(code: unknown): code is string {
  return typeof code === "string" && hasOwn(ERRORS, code);
}

const brokerOnly: ReadonlySet<string> = new Set(BROKER_ONLY);  // private: a tool may import us

/** A tool's own failure as [code, message]: a typed error it may claim keeps its code;
 * a broker-only code becomes TOOL_FAILED (the broker maps it again, whatever a tool sends). */
export function toolFailure(code: string, message: string): [string, string] {
  if (isErrorCode(code) && !brokerOnly.has(code)) return [code, message];
  return ["TOOL_FAILED", `the tool failed claiming ${JSON.stringify(code).slice(0, 40)}: ${message}`];
}

/** The typed error for a wire code; an unknown code is itself a protocol error. */
export function errorFromWire(code: string, message: string): LibosError {
  const cls = ERRORS[code];
  if (cls === undefined) return new ProtocolError(`unknown error code ${JSON.stringify(code)}: ${message}`);
  return new cls(message);
}
