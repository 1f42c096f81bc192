// The `libos` object a tool receives: libc-like wrappers over the broker's syscall table.
//
// Nothing here has authority. Each wrapper turns its positional arguments into the syscall's
// argument map (parameter order = the table's schema order, see syscalls.gen.ts) and sends one
// syscall frame; the broker checks, audits and performs it, and the answer (or a typed error)
// comes back. One object is made per call and revoked when the call ends, so a callback a
// tool leaves behind cannot act in the name of a later call.

import * as errors from "./errors.ts";
import { type LibosApi, SYSCALLS } from "./syscalls.gen.ts";

export type SyscallFn = (name: string, args: Record<string, unknown>) => Promise<unknown>;

export type Libos = LibosApi & {
  errors: typeof errors.ERRORS;
  LibosError: typeof errors.LibosError;
  NotCapable: typeof errors.NotCapable;
  ApprovalDenied: typeof errors.ApprovalDenied;
  InvalidArgument: typeof errors.InvalidArgument;
  LimitExceeded: typeof errors.LimitExceeded;
  ProtocolError: typeof errors.ProtocolError;
  SandboxCrashed: typeof errors.SandboxCrashed;
  NotFound: typeof errors.NotFound;
  Conflict: typeof errors.Conflict;
  Cancelled: typeof errors.Cancelled;
};

function argsFor(params: readonly string[], values: unknown[]): Record<string, unknown> {
  if (values.length > params.length) {
    throw new errors.InvalidArgument(`expected at most ${params.length} arguments, got ${values.length}`);
  }
  const args: Record<string, unknown> = {};
  for (let i = 0; i < values.length; i++) {
    if (values[i] !== undefined) args[params[i]] = values[i];
  }
  return args;
}

/** A fresh `libos` for one call; every wrapper goes through `syscall`. */
export function makeLibos(syscall: SyscallFn): Libos {
  const lib: Record<string, unknown> = {
    syscall: (name: string, args: Record<string, unknown> = {}) => {
      if (typeof name !== "string") return Promise.reject(new errors.InvalidArgument("syscall name must be a string"));
      return syscall(name, args ?? {});
    },
    errors: errors.ERRORS,
    LibosError: errors.LibosError,
    ...errors.ERRORS_BY_NAME,
  };
  for (const spec of SYSCALLS) {
    const dot = spec.name.indexOf(".");
    const family = spec.name.slice(0, dot);
    const op = spec.name.slice(dot + 1);
    const ns = (lib[family] ??= {}) as Record<string, unknown>;
    const { name, params } = spec;
    ns[op] = (...values: unknown[]) => {
      let args: Record<string, unknown>;
      try {
        args = argsFor(params, values);
      } catch (e) {
        return Promise.reject(e);
      }
      return syscall(name, args);
    };
  }
  for (const v of Object.values(lib)) if (typeof v === "object" && v !== null) Object.freeze(v);
  return Object.freeze(lib) as unknown as Libos;
}
