// Hardening of the realm a sandbox's tools share: after the runtime has set itself up and
// before any tool code loads, every built-in object reachable from the global scope (and the
// ones reachable only through syntax: generator, async and iterator prototypes) is frozen,
// and every global binding is made read-only. A tool can then no longer plant a hook in a
// built-in (`WeakMap.prototype.set`, `Promise.prototype.then`, `JSON.parse`, ...) that would
// run inside a later call, see what that call handles, or change its result: the realm a
// later call runs in is the one the runtime left, whatever an earlier call tried.
//
// This is the job of SES's `lockdown()`, done here without its taming (it would remove
// properties this Deno has and SES does not know, and change Error stacks and locale
// methods): freeze, nothing else, plus the one repair freezing needs. Assigning to a property
// that an object inherits from a frozen prototype fails ("the override mistake"), which would
// break ordinary code such as `this.name = "MyError"` in an Error subclass; for the
// properties code commonly overrides that way, the frozen prototype gets an accessor whose
// setter defines the property on the object assigned to instead.
//
// Lazily loaded globals (Deno defines most web classes as getters that load their module on
// first use) are frozen when first read: their getter is wrapped, so no startup time is spent
// loading what no tool uses.

const {
  defineProperty, freeze, getOwnPropertyDescriptor, getPrototypeOf, preventExtensions,
} = Object;
const { apply, ownKeys } = Reflect;
const hasOwn = Object.hasOwn;
const WeakSetCtor = WeakSet;
const TypeErrorCtor = TypeError;
const StringCtor = String;

type Obj = object;

const hardened: WeakSet<Obj> = new WeakSetCtor();
// Objects a walk must not freeze: the global object (its bindings are made read-only
// instead, and Deno keeps internal state on it).
const spared: WeakSet<Obj> = new WeakSetCtor();

function isObject(v: unknown): v is Obj {
  return (typeof v === "object" && v !== null) || typeof v === "function";
}

// Failures to freeze (expected none). Not exported as the array itself: exports are frozen
// with the rest, and a tool can import this module.
const failures: string[] = [];

/** What lockdown could not freeze, for the test that checks it is complete. */
export function lockdownFailures(): string[] {
  return failures.slice();
}

/** Freeze `root` and everything reachable from it through properties, accessors and
 * prototypes. Idempotent and cheap for what is already hardened. */
export function harden(root: unknown): void {
  // (Direct method calls are safe here: this runs before any tool code, or after lockdown has
  // frozen WeakSet's prototype and the rest.)
  if (!isObject(root)) return;
  const stack: Obj[] = [root];
  while (stack.length) {
    const obj = stack.pop()!;
    if (hardened.has(obj) || spared.has(obj)) continue;
    hardened.add(obj);
    try {
      if (obj === ErrorCtor) sealError();
      else if (!isModuleNamespace(obj)) freeze(obj);
      const proto = getPrototypeOf(obj);
      if (proto !== null) stack.push(proto);
      // One descriptor per key, not getOwnPropertyDescriptors: the object that call builds
      // (every key of every built-in, once each) cost a third of lockdown, about 5 ms of
      // every sandbox's start here (instruction counts, 112 M against 96 M per start).
      const keys = ownKeys(obj);
      for (let i = 0; i < keys.length; i++) {
        const desc = getOwnPropertyDescriptor(obj, keys[i])!;
        const value = desc.value;
        if ((typeof value === "object" && value !== null) || typeof value === "function") {
          stack.push(value);
        }
        if (desc.get !== undefined) stack.push(desc.get);
        if (desc.set !== undefined) stack.push(desc.set);
      }
    } catch (e) {
      // a proxy whose traps refuse (Deno's localStorage): what it hides stays as it is
      failures.push(`${describe(obj)}: ${(e as Error).message}`);
    }
  }
}

const ErrorCtor = Error;

/** A module namespace (`import * as ns`) cannot be frozen, and need not be: what it exports
 * is read-only to importers. What it exports is hardened like any property. */
function isModuleNamespace(obj: Obj): boolean {
  return getPrototypeOf(obj) === null &&
    getOwnPropertyDescriptor(obj, Symbol.toStringTag)?.value === "Module";
}

/** `Error` is frozen but for `stackTraceLimit`, which V8 reads as a data property and Pyodide
 * sets while it makes a JavaScript error: it stays writable (a later call's stack traces may be
 * shorter, nothing else), and nothing can be added (no `prepareStackTrace`). */
function sealError(): void {
  const keys = ownKeys(ErrorCtor);
  for (let i = 0; i < keys.length; i++) {
    const desc = getOwnPropertyDescriptor(ErrorCtor, keys[i])!;
    const writable = keys[i] === "stackTraceLimit";
    defineProperty(ErrorCtor, keys[i], "value" in desc
      ? { writable: writable && desc.writable, configurable: false }
      : { configurable: false });
  }
  preventExtensions(ErrorCtor);
}

function describe(obj: Obj): string {
  try {
    const name = typeof obj === "function" ? (obj as { name?: unknown }).name : undefined;
    return typeof name === "string" && name ? name : StringCtor(obj);
  } catch {
    return "an object";
  }
}

/** Replace a data property of a prototype with an accessor, so that assigning it on an
 * object that inherits it defines an own property there (instead of failing once the
 * prototype is frozen); assigning it on the prototype itself still fails. */
function tameOverride(proto: Obj, key: string): void {
  const desc = getOwnPropertyDescriptor(proto, key);
  if (desc === undefined || !("value" in desc) || !desc.configurable) return;
  const value = desc.value;
  const get = function () {
    return value;
  };
  const set = function (this: unknown, next: unknown) {
    if (this === proto) {
      throw new TypeErrorCtor(`Cannot assign to read only property '${key}' of a frozen built-in`);
    }
    if (!isObject(this)) throw new TypeErrorCtor(`Cannot create property '${key}' on a primitive`);
    if (hasOwn(this, key)) {
      (this as Record<string, unknown>)[key] = next;
    } else {
      defineProperty(this, key, { value: next, writable: true, enumerable: true, configurable: true });
    }
  };
  defineProperty(proto, key, { get, set, enumerable: desc.enumerable, configurable: false });
}

const ERROR_PROTOTYPES = ["EvalError", "RangeError", "ReferenceError", "SyntaxError", "TypeError",
  "URIError", "AggregateError", "SuppressedError"];

function tameOverrides(): void {
  // The properties libraries are known to assign on instances (SES's "moderate" list, less
  // the ones whose accessor would defeat V8's fast paths: Array's iterator and push,
  // Promise's constructor).
  for (const key of ["constructor", "toString", "toLocaleString", "valueOf"]) {
    tameOverride(Object.prototype, key);
  }
  for (const key of ["constructor", "bind", "toString"]) tameOverride(Function.prototype, key);
  for (const key of ["constructor", "message", "name", "toString"]) {
    tameOverride(Error.prototype, key);
  }
  const g = globalThis as unknown as Record<string, { prototype?: Obj } | undefined>;
  for (const name of ERROR_PROTOTYPES) {
    const proto = g[name]?.prototype;
    if (proto === undefined) continue;
    for (const key of ["constructor", "message", "name"]) tameOverride(proto, key);
  }
}

/** Objects reachable only through syntax or through instances, never as a global. */
function hiddenIntrinsics(): unknown[] {
  const found: unknown[] = [];
  const protoOf = (v: unknown) => {
    try {
      found[found.length] = getPrototypeOf(v);
    } catch { /* not there in this engine */ }
  };
  const attempts: (() => unknown)[] = [
    () => function* () {},
    () => async function () {},
    () => async function* () {},
    () => (function* () {})(),
    () => (async function* () {})(),
    () => [][Symbol.iterator](),
    () => new Map()[Symbol.iterator](),
    () => new Set()[Symbol.iterator](),
    () => ""[Symbol.iterator](),
    () => /x/[Symbol.matchAll](""),
    () => [].values().map((x) => x),
    () => Iterator.from({ next: () => ({ done: true, value: undefined }) }),
    () => new URLSearchParams().entries(),
    // (Intl.Segmenter's and ReadableStream's iterators are left out: making one loads ICU
    // data or the streams module, 30-100 ms of every start.)
  ];
  for (const make of attempts) {
    let v: unknown;
    try {
      v = make();
    } catch {
      continue;
    }
    protoOf(v);
    if (typeof v === "function") found[found.length] = v;
  }
  return found;
}

/** Harden the realm: freeze every built-in, make every global binding read-only and the
 * global object non-extensible. `eager` names lazily loaded globals the runtime itself has
 * already used (they are hardened now rather than on a tool's first read); `roots` are the
 * runtime's own objects a tool can reach, its module namespaces included. Run once, after
 * the runtime's setup. */
export function lockdown(eager: string[] = [], roots: unknown[] = []): void {
  const global = globalThis as unknown as Record<string | symbol, unknown>;
  spared.add(globalThis);
  tameOverrides();
  for (const name of eager) harden(global[name]);
  for (const root of roots) harden(root);
  for (const root of hiddenIntrinsics()) harden(root);
  const keys = ownKeys(globalThis);
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i];
    const desc = getOwnPropertyDescriptor(globalThis, key)!;
    if (typeof key === "symbol") continue; // Deno's own slots: below
    if ("value" in desc) {
      if (desc.value !== globalThis) harden(desc.value);
      if (desc.configurable || desc.writable) {
        defineProperty(globalThis, key, { value: desc.value, writable: false, configurable: false });
      }
      continue;
    }
    if (!desc.configurable) continue;
    const get = desc.get;
    // A getter (Deno loads a module on first read): what it returns is hardened then. No
    // setter: assigning a global fails.
    const wrapped = get === undefined ? undefined : function (this: unknown) {
      const value = apply(get, this, []);
      if (value !== globalThis) harden(value);
      return value;
    };
    harden(wrapped);
    defineProperty(globalThis, key, {
      get: wrapped,
      set: undefined,
      enumerable: desc.enumerable,
      configurable: false,
    });
  }
  // Nothing can be added to the global object either: a global a call defines (a getter
  // under a name a later tool tests for, like `window`) would be a trap for the next call.
  // Deno marks the global object when it dispatches "unload" (Deno.exit does), which would
  // then fail: the mark is made now, before the object is closed.
  globalThis.dispatchEvent(new Event("unload"));
  // Deno's own slots on the global object, symbol-keyed: its event listeners (the runtime's,
  // which come first and stop every event, are there), its WebIDL brand and the unload mark.
  // They were writable and configurable: a call could put its own callback in the runtime's
  // listener record and receive what a later call's rejected promise carried. They are read
  // only now, and so is what they hold (adding a global listener is a TypeError).
  const slots = ownKeys(globalThis); // the unload mark may be new
  for (let i = 0; i < slots.length; i++) {
    const key = slots[i];
    if (typeof key !== "symbol") continue;
    const desc = getOwnPropertyDescriptor(globalThis, key)!;
    if (!("value" in desc)) continue;
    harden(desc.value);
    defineProperty(globalThis, key, { value: desc.value, writable: false, configurable: false });
  }
  preventExtensions(globalThis);
}

