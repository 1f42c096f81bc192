"""The single syscall table: name → argument schema, required right, handler.

Everything else is derived from it: argument validation, the capability check, audit names,
and the stubs that TypeScript, WebAssembly and Python tools see (`describe()`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.caps import Decision
from broker.schema import Schema, compile_schema
from broker.syscalls.context import SyscallContext

Handler = Callable[[SyscallContext, dict[str, Any], Any], Any]
Authorize = Callable[[SyscallContext, dict[str, Any]], Decision]


@dataclass(frozen=True, slots=True)
class SyscallDef:
    name: str
    doc: str
    schema: dict[str, Any]
    kind: str | None
    right: str | None
    authorize: Authorize | None
    handler: Handler
    blocking: bool
    resource: Callable[[SyscallContext, dict[str, Any]], str] | None
    waits: bool  # the process waits on something outside itself (a timer, a child, a person)
    # No effect on the world: safe to run again when a crash left its outcome unknown.
    idempotent: bool
    # Keep the full arguments beside the intent (for replay), not only their summary.
    keep_args: bool
    validator: Schema | LazySchema = field(repr=False, compare=False)
    # Its handler answers with a value it built for this call, which nothing else holds: a
    # builtin wrapping it hands it on untouched, so that tool's outcome records it as the
    # syscall's did (`Dispatcher._answer`), even when it is a map.
    fresh_answer: bool = False

    def check_args(self, args: Any) -> dict[str, Any]:
        self.validator.check(args, self.name)
        return args

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "doc": self.doc,
            "schema": self.schema,
            "right": f"{self.kind}:{self.right}" if self.kind else None,
            "blocking": self.blocking,
        }


class LazySchema:
    """A built-in syscall's argument schema, compiled at its first check rather than when the
    table is built: compiling the whole table took about a tenth of `import broker.kernel`,
    paid again by every process that imports the kernel (the CLI, `libos demo`'s two
    brokers), most of whose syscalls it never makes. tests/broker/syscalls/test_table.py
    compiles every one, so a broken built-in schema still fails the tests, not a tool's call.
    Two threads compiling at once both get the same (cached) result."""

    __slots__ = ("_compiled", "_name", "_schema")

    def __init__(self, schema: dict[str, Any], name: str) -> None:
        self._schema = schema
        self._name = name
        self._compiled: Schema | None = None

    def compiled(self) -> Schema:
        if self._compiled is None:
            self._compiled = compile_schema(self._schema, self._name)
        return self._compiled

    def check(self, value: Any, what: str) -> None:
        self.compiled().check(value, what)


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What a handler returns when its call goes on as another call: `result` is this call's
    outcome, and the dispatcher then runs syscall `name` with `args` through the whole
    pipeline (validate, check, budget, intent, act), as the same caller. A redirect hop of
    `net.fetch` is one: it is checked, counted and audited like any other request."""

    name: str
    args: dict[str, Any]
    result: Any


TABLE: dict[str, SyscallDef] = {}

# Every checked syscall accepts an optional `reason`: why the tool makes the call. It is shown
# to the person asked when only an `ask` capability covers the call, and is part of the
# arguments (and of the hash an approval is bound to); handlers ignore it.
REASON = {"type": "string", "maxLength": 1000}


def object_schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def syscall(
    name: str,
    *,
    doc: str,
    args: dict[str, Any] | None = None,
    required: tuple[str, ...] = (),
    kind: str | None = None,
    right: str | None = None,
    resource: Callable[[SyscallContext, dict[str, Any]], str] | None = None,
    authorize: Authorize | None = None,
    blocking: bool = False,
    waits: bool = False,
    idempotent: bool = False,
    keep_args: bool = False,
    fresh_answer: bool = False,
) -> Callable[[Handler], Handler]:
    """Register a primitive. With `kind`/`right` and `resource`, the default check is the
    caller's capability for that resource; `authorize` replaces it (paths, spawn)."""

    if authorize is None and kind is not None:
        if resource is None or right is None:
            raise ValueError(f"{name}: a checked syscall needs a right and a resource")
        kind_, right_, resource_ = kind, right, resource

        def authorize(ctx: SyscallContext, a: dict[str, Any]) -> Decision:
            return ctx.check(kind_, right_, resource_(ctx, a))

    properties = dict(args or {})
    if kind is not None:
        properties.setdefault("reason", REASON)
    schema = object_schema(properties, required)

    def register(handler: Handler) -> Handler:
        if name in TABLE:
            raise ValueError(f"syscall {name} defined twice")
        TABLE[name] = SyscallDef(
            name=name, doc=doc, schema=schema, kind=kind, right=right, authorize=authorize,
            handler=handler, blocking=blocking or waits, resource=resource, waits=waits,
            idempotent=idempotent, keep_args=keep_args,
            validator=LazySchema(schema, name), fresh_answer=fresh_answer)
        return handler

    return register


def describe() -> list[dict[str, Any]]:
    """The table as data, for generating or checking sandbox stubs."""
    return [TABLE[name].describe() for name in sorted(TABLE)]


# Shared schema fragments
PATH = {"type": "string", "minLength": 1, "maxLength": 4096}
NAME = {"type": "string", "minLength": 1, "maxLength": 256}
PID = {"type": "integer", "minimum": 1}
TIMEOUT = {"type": ["number", "null"], "minimum": 0}
