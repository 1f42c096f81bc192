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

export type Libos = LibosApi & typeof errors.ERRORS_BY_NAME & {
  errors: typeof errors.ERRORS;
  LibosError: typeof errors.LibosError;
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

type Family = { name: string; ops: { op: string; name: string; params: readonly string[] }[] };
const FAMILIES: Family[] = [];
for (const spec of SYSCALLS) {
  const dot = spec.name.indexOf(".");
  const family = spec.name.slice(0, dot);
  let f = FAMILIES.find((x) => x.name === family);
  if (f === undefined) FAMILIES.push(f = { name: family, ops: [] });
  f.ops.push({ op: spec.name.slice(dot + 1), name: spec.name, params: spec.params });
}

function namespace(family: Family, syscall: SyscallFn): Readonly<Record<string, unknown>> {
  const ns: Record<string, unknown> = {};
  for (const { op, name, params } of family.ops) {
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
  return Object.freeze(ns);
}

// What every call's libos shares; the syscall function of each is kept out of reach of the
// tool (a WeakMap), and a family's wrappers are made the first time the tool touches it.
const SYSCALL_OF = new WeakMap<object, SyscallFn>();
const PROTO: Record<string, unknown> = {
  errors: errors.ERRORS,
  LibosError: errors.LibosError,
  ...errors.ERRORS_BY_NAME,
};
for (const family of FAMILIES) {
  Object.defineProperty(PROTO, family.name, {
    enumerable: true,
    get(this: object) {
      const ns = namespace(family, SYSCALL_OF.get(this)!);
      Object.defineProperty(this, family.name, { value: ns, enumerable: true });
      return ns;
    },
  });
}
Object.freeze(PROTO);

/** What every call's `libos` inherits: the runtime hardens it with the built-ins. */
export const LIBOS_PROTOTYPE: object = PROTO;

/** A fresh `libos` for one call; every wrapper goes through `syscall`. */
export function makeLibos(syscall: SyscallFn): Libos {
  const lib = Object.create(PROTO);
  SYSCALL_OF.set(lib, syscall);
  lib.syscall = (name: string, args: Record<string, unknown> = {}) => {
    if (typeof name !== "string") return Promise.reject(new errors.InvalidArgument("syscall name must be a string"));
    return syscall(name, args ?? {});
  };
  return lib as Libos;
}
