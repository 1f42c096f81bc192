"""The host tools of one kernel: the embedder's functions behind the same capabilities,
approvals, budgets and audit as a syscall (docs/DESIGN.md, invariant 9).

Registration is per kernel, never process-wide: each registered tool becomes a `SyscallDef`
of this kernel only, named `host.<tool>`, which is *not* in the syscall table. The tool table
runs it through the dispatcher (`Dispatcher.run(..., spec=...)`) when the tool is called:
from a planner, `Kernel.call_tool`, the MCP server or a sandboxed tool's `tool.call`. A raw
`libos.syscall("host.x")` looks the name up in the table, finds nothing and is refused as an
unknown syscall, so nothing reaches a host tool around its capability.

A call is checked in the dispatcher's check step: the resource is derived from the arguments
and checked against the calling process's capabilities of the tool's own kind and right
(`ask` puts the exact arguments to a person, deny rules win, one-shot grants and budgets
apply), with intent and outcome records in the chain. Then the function runs: an async one in
trio, a sync one in a worker thread of this kernel's own (`to_thread`, abandoned at the
deadline, so a function that never returns holds a thread but never the broker). What it
returns must be plain data (what a sandbox could be sent). Whatever it raises becomes
`ToolFailed` with a short message, a `BaseException` too (SystemExit, asyncio's
CancelledError: never the broker's end), save trio's cancellation and a Ctrl-C; the traceback
goes to the log (`libos.host_tools`), never into the result or the audit.
"""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from broker.caps import RIGHTS
from broker.caps.host_scope import check_resource
from broker.errors import (
    Conflict,
    InvalidArgument,
    LibosError,
    LimitExceeded,
    NotFound,
    ProtocolError,
    ToolFailed,
    exception_text,
    tool_error,
)
from broker.kernel.builtin_tools import BUILTINS
from broker.kernel.foreign import passes
from broker.kernel.host_tool import HostCall, HostTool, host_tool
from broker.protocol.frames import check_encodable
from broker.schema import compile_schema
from broker.store import AuditRecord
from broker.syscalls import SyscallDef

if TYPE_CHECKING:
    from broker.caps import Decision
    from broker.kernel.ports import HostToolsNeeds
    from broker.syscalls import SyscallContext

log = logging.getLogger("libos.host_tools")

FAMILY = "host."  # a host tool's records name `host.<tool>`; the table has no such family
REGISTER_RECORD = "host.register"
MAX_MESSAGE = 200  # of a function's exception, in the error and the audit
MAX_LOGGED = 4096  # of its message in the log, beside the traceback
THREADS = 16  # sync host functions running (or abandoned, still running) at once per kernel


class HostTools:
    def __init__(self, kernel: HostToolsNeeds) -> None:
        self.kernel = kernel
        self._defs: dict[str, SyscallDef] = {}
        self._tools: dict[str, HostTool] = {}
        # Its own threads: abandoned functions cannot starve the broker's other thread users.
        self.threads = trio.CapacityLimiter(THREADS)

    # -- registration ------------------------------------------------------------------------

    def register(self, tool: Any = None, *, state: Any = None, **options: Any) -> Any:
        """`kernel.host_tool(fn, kind=..., ...)`, `kernel.host_tool(tool)`, or without a tool a
        decorator: `@kernel.host_tool(kind="email", right="send", resource="to")`."""
        if tool is None:
            return lambda fn: self.add(fn, state=state, **options)
        return self.add(tool, state=state, **options)

    def add_all(self, tools: Iterable[Any], *, state: Any = None) -> None:
        for tool in tools:
            self.add(tool, state=state)

    def add(self, tool: Any, *, state: Any = None, replace: bool = False,
            **options: Any) -> HostTool:
        """Register a host tool in this kernel (a `HostTool`, or a function with the options
        of `host_tool`). Audited; a refusal is a typed error with a `rejected` record. A name
        registered already is `Conflict` unless `replace` (then the new one takes its place)."""
        try:
            if not isinstance(tool, HostTool):
                tool = host_tool(tool, **options)
            elif options:
                raise InvalidArgument("a HostTool is defined already: give its options to "
                                      "host_tool(...)")
            definition = self._definition(tool, state, replace)
        except LibosError as exc:
            shown = options.get("name") or getattr(tool, "name", getattr(tool, "__name__", None))
            self._audit("rejected", str(shown)[:64] if shown else None,
                        {"error": exc.code, "message": exc.message[:MAX_MESSAGE]})
            raise
        replaced = tool.name in self._defs
        # Its record first: a store that fails it leaves nothing registered (the host is told
        # a typed `Conflict`: `kernel.host_tool` is typed), never a tool the chain never saw.
        self._audit("admin", tool.name, {
            "kind": tool.kind, "right": tool.right, "read_only": tool.read_only,
            "replaced": replaced,
            "schema": tool.schema, "description": tool.description})
        self._tools[tool.name] = tool
        self._defs[tool.name] = definition
        return tool

    def remove(self, name: str) -> None:
        """Unregister a host tool (audited): a process that lists it finds it no more, and a
        call to it is `NotFound`."""
        if self._defs.pop(name, None) is not None:
            del self._tools[name]
            self._audit("admin", name, {"removed": True})

    def _definition(self, tool: HostTool, state: Any, replace: bool) -> SyscallDef:
        if tool.name in BUILTINS:
            raise Conflict(f"{tool.name!r} is a builtin tool")
        if tool.name in self._defs and not replace:
            raise Conflict(f"host tool {tool.name!r} is registered already in this kernel "
                           "(register it with replace=True to replace it)")
        if not isinstance(tool.schema, dict) or tool.schema.get("type") != "object":
            raise InvalidArgument(f"host tool {tool.name}: its schema must be of type object")
        validator = compile_schema(tool.schema, f"host tool {tool.name} schema")
        return SyscallDef(
            name=FAMILY + tool.name, doc=tool.description, schema=tool.schema, kind=tool.kind,
            right=tool.right, authorize=functools.partial(_authorize, tool),
            handler=functools.partial(self._run, tool, state), blocking=True,
            resource=functools.partial(_resource, tool), waits=False,
            idempotent=tool.read_only, keep_args=True, validator=validator)

    def _audit(self, phase: str, name: str | None, detail: dict[str, Any]) -> None:
        self.kernel.store.append_audit(AuditRecord(
            phase=phase, syscall=REGISTER_RECORD, resource=name, detail=detail))

    # -- lookups -----------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self._defs

    def definition(self, name: str) -> SyscallDef:
        found = self._defs.get(name)
        if found is None:
            raise NotFound(f"host tool {name!r} is not registered in this kernel")
        return found

    def spec(self, name: str) -> dict[str, Any]:
        """The tool as a process's tool table lists it."""
        tool = self._tools.get(name)
        if tool is None:
            raise NotFound(f"host tool {name!r} is not registered in this kernel")
        return {"lang": "host", "description": tool.description, "schema": tool.schema,
                "manifest": None, "hash": None}

    def check_kind(self, kind: str) -> None:
        """A capability kind outside the builtin ones must be a host tool's of this kernel:
        a misspelt kind in an image's needs is refused, not a grant that covers nothing."""
        if kind not in RIGHTS and not any(t.kind == kind for t in self._tools.values()):
            raise InvalidArgument(f"no host tool of kind {kind!r} is registered in this "
                                  "kernel")

    # -- a call --------------------------------------------------------------------------------

    async def _run(self, tool: HostTool, state: Any, ctx: SyscallContext, args: dict[str, Any],
                   proof: Any) -> Any:
        """The handler: run the function as approved, within its deadline."""
        call = HostCall(pid=ctx.pid, tool=tool.name, args=_copy(args), call=ctx.intent_seq,
                        state=state)
        limits = getattr(ctx.invocation, "limits", None) or self.kernel.call_limits
        deadline = tool.deadline if tool.deadline is not None else limits.deadline
        with trio.move_on_after(deadline) as scope:
            try:
                kwargs = tool.convert(args)  # (its models' validators are its code too)
                if tool.context is not None:
                    kwargs[tool.context] = call
                # What it declared its results carry, its failures too (an error's text is
                # its own; arguments its models refused are the caller's, as they were).
                ctx.result_labels = tool.labels
                if tool.is_async:
                    result = await tool.fn(**kwargs)
                else:
                    result = await trio.to_thread.run_sync(
                        functools.partial(tool.fn, **kwargs), abandon_on_cancel=True,
                        limiter=self.threads)
            except LibosError as exc:  # the embedder's own typed error: kept, unless the
                raise tool_error(exc.code, _short(exc.message)) from None  # broker's only
            except BaseException as exc:  # (SystemExit, say argparse's, or asyncio's
                if passes(exc):  # CancelledError fail the call, never the broker)
                    raise
                log.error("host tool %s failed (call %d of process %d):\n%s", tool.name,
                          ctx.intent_seq, ctx.pid, _traceback(exc))
                raise ToolFailed(f"host tool {tool.name} failed: {type(exc).__name__}: "
                                 f"{_short(exception_text(exc))}") from None
        if scope.cancelled_caught:
            raise LimitExceeded(f"host tool {tool.name} ran past its deadline of {deadline:g} s "
                                "(abandoned)")
        return _plain(tool.name, result, limits.max_output_bytes)


def _authorize(tool: HostTool, ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    """The check step: the calling process's capability for the tool's own kind and right on
    the resource its arguments name."""
    return ctx.check(tool.kind, tool.right, _resource(tool, ctx, args))


def _resource(tool: HostTool, ctx: SyscallContext, args: dict[str, Any]) -> str:
    try:  # the caller's arguments first: their fault is not the resource function's
        copied = _copy(args)
    except (OverflowError, TypeError, ValueError, BufferError) as exc:  # (a view with gaps)
        raise InvalidArgument(f"host tool {tool.name}: its arguments are not plain data "
                              f"({type(exc).__name__})") from None
    try:
        resource = tool.resource(copied)
    except BaseException as exc:
        if passes(exc):
            raise
        log.error("resource function of host tool %s failed", tool.name, exc_info=exc)
        raise InvalidArgument(f"host tool {tool.name}: its resource function failed "
                              f"({type(exc).__name__})") from None
    return check_resource(resource, f"host tool {tool.name}")


def _copy(args: dict[str, Any]) -> dict[str, Any]:
    # Checked arguments are plain JSON data: a copy the embedder's code may change freely.
    return msgpack.unpackb(msgpack.packb(args, use_bin_type=True), raw=False)


def _traceback(exc: BaseException) -> str:
    """The traceback for the log, its message bounded (an exception may carry megabytes)."""
    where = "".join(traceback.format_tb(exc.__traceback__))
    return f"{where}{type(exc).__name__}: {exception_text(exc)[:MAX_LOGGED]}"




def _short(message: str) -> str:
    """A bounded message, one line: what a caller and the audit are told."""
    text = " ".join(str(message)[:MAX_MESSAGE * 2].split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"


def _plain(name: str, value: Any, max_bytes: int) -> Any:
    """What a host tool returns, as plain data (a pydantic model is dumped to JSON data);
    anything else is the tool's failure, and more than the output limit is LimitExceeded."""
    try:  # (the value's own code runs here: a model's dump, a class's __getattr__)
        dump = getattr(value, "model_dump", None)
        if callable(dump) and type(value).__module__ != "builtins":
            value = dump(mode="json")
    except BaseException as exc:
        if passes(exc):
            raise
        raise ToolFailed(f"host tool {name} returned a model that cannot be dumped "
                         f"({type(exc).__name__})") from None
    try:
        check_encodable(value)
    except ProtocolError as exc:
        raise ToolFailed(f"host tool {name} returned something that is not plain data: "
                         f"{exc.message}") from None
    try:
        size = len(msgpack.packb(value, use_bin_type=True))
    except (OverflowError, TypeError, ValueError) as exc:
        raise ToolFailed(f"host tool {name} returned something that is not plain data "
                         f"({type(exc).__name__})") from None
    if size > max_bytes:
        raise LimitExceeded(f"host tool {name} returned {size} bytes (more than {max_bytes})")
    return value
