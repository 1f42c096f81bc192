// The typed error set, as TypeScript Error subclasses with the same wire codes as
// broker/errors.py. A tool catches them with `instanceof` (e.g. `libos.NotCapable`) or by
// `.code`.

export class LibosError extends Error {
  static readonly code: string = "INTERNAL";
  readonly code: string;
  constructor(message?: string) {
    const code = (new.target as unknown as { code: string }).code;
    super(message || code);
    this.code = code;
    this.name = new.target.name;
  }
}

/** No capability for the effect, or an attempt to widen authority (escalation). */
export class NotCapable extends LibosError {
  static override readonly code = "NOT_CAPABLE";
}
/** A person (or the deadline standing in for one) said no. */
export class ApprovalDenied extends LibosError {
  static override readonly code = "APPROVAL_DENIED";
}
/** Arguments that fail a schema, a path that cannot be, an illegal request. */
export class InvalidArgument extends LibosError {
  static override readonly code = "INVALID_ARGUMENT";
}
/** Time, memory, fuel, output, rate or budget ran out. */
export class LimitExceeded extends LibosError {
  static override readonly code = "LIMIT_EXCEEDED";
}
/** Malformed, oversized or out-of-order frames. */
export class ProtocolError extends LibosError {
  static override readonly code = "PROTOCOL_ERROR";
}
/** The sandbox process or instance died while it held the call. */
export class SandboxCrashed extends LibosError {
  static override readonly code = "SANDBOX_CRASHED";
}
export class NotFound extends LibosError {
  static override readonly code = "NOT_FOUND";
}
/** The state does not allow it: a version mismatch, an illegal transition, a used grant. */
export class Conflict extends LibosError {
  static override readonly code = "CONFLICT";
}
export class Cancelled extends LibosError {
  static override readonly code = "CANCELLED";
}

export const ERRORS: Readonly<Record<string, typeof LibosError>> = Object.freeze({
  NOT_CAPABLE: NotCapable,
  APPROVAL_DENIED: ApprovalDenied,
  INVALID_ARGUMENT: InvalidArgument,
  LIMIT_EXCEEDED: LimitExceeded,
  PROTOCOL_ERROR: ProtocolError,
  SANDBOX_CRASHED: SandboxCrashed,
  NOT_FOUND: NotFound,
  CONFLICT: Conflict,
  CANCELLED: Cancelled,
});

const hasOwn = Object.hasOwn;

/** Is `code` one of the wire codes? (A function, not an exported Set: a Set stays mutable
 * when frozen, and a tool can import this module.) */
export function isErrorCode(code: unknown): code is string {
  return typeof code === "string" && hasOwn(ERRORS, code);
}

/** The typed error for a wire code; an unknown code is itself a protocol error. */
export function errorFromWire(code: string, message: string): LibosError {
  const cls = ERRORS[code];
  if (cls === undefined) return new ProtocolError(`unknown error code ${JSON.stringify(code)}: ${message}`);
  return new cls(message);
}

export const ERRORS_BY_NAME = Object.freeze({
  NotCapable,
  ApprovalDenied,
  InvalidArgument,
  LimitExceeded,
  ProtocolError,
  SandboxCrashed,
  NotFound,
  Conflict,
  Cancelled,
});
