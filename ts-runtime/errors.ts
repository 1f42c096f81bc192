// The typed error set: the classes are generated from broker/errors.py (errors.gen.ts); here
// are the lookups by wire code.

import { BROKER_ONLY, ERRORS, LibosError, ProtocolError } from "./errors.gen.ts";

export * from "./errors.gen.ts";

export const ERROR_CODES: ReadonlySet<string> = new Set(Object.keys(ERRORS));
/** Codes a tool may not fail with (the broker's verdicts on a call); see `toolFailure`. */
export const BROKER_ONLY_CODES: ReadonlySet<string> = new Set(BROKER_ONLY);

/** A tool's own failure as [code, message]: a typed error it may claim keeps its code;
 * a broker-only code becomes TOOL_FAILED (the broker maps it again, whatever a tool sends). */
export function toolFailure(code: string, message: string): [string, string] {
  if (ERROR_CODES.has(code) && !BROKER_ONLY_CODES.has(code)) return [code, message];
  return ["TOOL_FAILED", `the tool failed claiming ${JSON.stringify(code).slice(0, 40)}: ${message}`];
}

/** The typed error for a wire code; an unknown code is itself a protocol error. */
export function errorFromWire(code: string, message: string): LibosError {
  const cls = ERRORS[code];
  if (cls === undefined) return new ProtocolError(`unknown error code ${JSON.stringify(code)}: ${message}`);
  return new cls(message);
}
