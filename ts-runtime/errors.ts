// The typed error set: the classes are generated from broker/errors.py (errors.gen.ts); here
// are the lookups by wire code.

import { ERRORS, LibosError, ProtocolError } from "./errors.gen.ts";

export * from "./errors.gen.ts";

export const ERROR_CODES: ReadonlySet<string> = new Set(Object.keys(ERRORS));

/** The typed error for a wire code; an unknown code is itself a protocol error. */
export function errorFromWire(code: string, message: string): LibosError {
  const cls = ERRORS[code];
  if (cls === undefined) return new ProtocolError(`unknown error code ${JSON.stringify(code)}: ${message}`);
  return new cls(message);
}
