"""The gate every framework adapter calls through: one libos process's tools, called by the
framework's own call ids, with approvals handed back to the framework's human-in-the-loop.

A call runs in the gate's nursery as `Kernel.call_tool` (the same schema check, capability
check, approvals and audit as any caller). `start` returns when the call ends (`Done`) or when
it files an approval request (`Asked`): the call itself keeps waiting in the broker, so the
framework can interrupt its run, put the request to its person and come back with the answer
(`answer`), which goes through the kernel's approval API under the framework's name and is
audited like any other. A request reaches the gate only if the gate's process filed it inside
that call (a front end that looks at the call's context, as the MCP server's does); others
stay in the approval queue for the CLI, the web page or their deadline. A call that the
framework never comes back for is cancelled when the gate closes, and its request is settled
as cancelled: nobody is left to run it.

Frameworks run on asyncio or on threads of their own, the kernel on trio: `blocking` and
`from_asyncio` carry a call into the kernel's trio thread; `run_asyncio` runs an asyncio
framework in a worker thread from trio.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from broker.errors import (
    Cancelled,
    Conflict,
    InvalidArgument,
    LibosError,
    LimitExceeded,
    NotFound,
)
from broker.json_text import depth_within
from broker.kernel import Kernel
from broker.kernel.approvals import ApprovalQueue
from broker.planner.bounds import DEFAULT_MAX_ARGUMENT_CHARS, MAX_ARGUMENT_DEPTH
from broker.store import args_hash

MAX_CALLS = 64  # calls one gate holds at once (running, or waiting for an answer)
MAX_KEY = 256  # a framework's call id is the model's text: bounded

_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "libos_adapter_call", default=None)


@dataclass(frozen=True)
class Done:
    """The call ended: its result, or the typed error as `{"code", "message"}`."""

    ok: bool
    value: Any

    @property
    def error(self) -> dict[str, str]:
        return {"error": self.value["code"], "message": self.value["message"]}


@dataclass(frozen=True)
class Asked:
    """The call waits for a person: the approval request it filed (as `Kernel.approvals`).
    `fresh`: filed after the one the framework was handed (that one answered elsewhere), so
    no answer the framework holds is for it: it is put to its person, or left to the queue."""

    request: dict[str, Any]
    fresh: bool = False


Outcome = Done | Asked


@dataclass(eq=False)
class _Call:
    key: str
    name: str
    args: Any
    pid: int
    events: tuple[trio.MemorySendChannel[Outcome], trio.MemoryReceiveChannel[Outcome]] = field(
        default_factory=lambda: trio.open_memory_channel(math.inf))
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    asked: dict[str, Any] | None = None  # the request the framework was last handed
    done: bool = False


def _error(exc: LibosError) -> Done:
    return Done(False, exc.to_wire())


def request_summary(request: dict[str, Any]) -> dict[str, Any]:
    """What the framework's person is shown of a libos request."""
    keys = ("id", "pid", "tool", "syscall", "resource", "right", "args", "args_hash", "reason",
            "deadline", "labels")  # (labels: the data approving it declassifies)
    return {k: request.get(k) for k in keys}


def _same(a: Any, b: Any) -> bool:
    """The same arguments, by the hash an approval binds (`1`, `1.0` and `true` are equal in
    Python, not in an approval)."""
    try:
        return args_hash(a) == args_hash(b)
    except Exception:  # (arguments no hash takes: nothing binds them)
        return False


def vet_arguments(args: Any, max_chars: int = DEFAULT_MAX_ARGUMENT_CHARS) -> None:
    """A model's arguments, bounded as a planner's are before anything is recorded: nested at
    most `MAX_ARGUMENT_DEPTH` deep, at most `max_chars` characters of JSON, encodable as
    UTF-8 (a lone surrogate is not). Their schema is the kernel's to check."""
    if not depth_within(args, MAX_ARGUMENT_DEPTH):
        raise InvalidArgument(f"tool arguments nested deeper than {MAX_ARGUMENT_DEPTH}")
    try:
        text = json.dumps(args, ensure_ascii=False, default=repr)
        text.encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError):
        raise InvalidArgument("tool arguments that are not UTF-8 JSON") from None
    if len(text) > max_chars:
        raise InvalidArgument(f"tool arguments of {len(text)} characters exceed the limit of "
                              f"{max_chars}")


class ToolGate:
    """Calls into one process of an open kernel, keyed by the framework's call ids."""

    def __init__(self, kernel: Kernel, pid: int, nursery: trio.Nursery, who: str) -> None:
        self.kernel = kernel
        self.pid = pid
        self.who = f"{who}:pid {pid}"
        self._nursery = nursery
        self._calls: dict[str, _Call] = {}
        self._token = trio.lowlevel.current_trio_token()

    @classmethod
    @asynccontextmanager
    async def open(cls, kernel: Kernel, pid: int, *, who: str) -> AsyncIterator[ToolGate]:
        """A gate for process `pid`; `who` names the framework in the approval records."""
        kernel.process(pid)  # NotFound now, not at the first call
        try:
            async with trio.open_nursery() as nursery:
                gate = cls(kernel, pid, nursery, who)
                with kernel.approver(gate):
                    try:
                        yield gate
                    finally:
                        gate.close()
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The calls catch everything: an error here is the caller's own, raised as itself.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from group.exceptions[0].__cause__
            raise

    # -- the front end -------------------------------------------------------------------------

    def requested(self, request: dict[str, Any], queue: ApprovalQueue) -> None:
        call = _current.get()
        if call is not None and not call.done and request["pid"] == call.pid \
                and self._calls.get(call.key) is call and self._pending(request["id"]):
            # (An approver told before this one may have answered it already.)
            call.events[0].send_nowait(Asked(request))

    # -- calls -----------------------------------------------------------------------------------

    def tools(self) -> list[dict[str, Any]]:
        """The process's tool table: name, language, description, JSON Schema."""
        return self.kernel.list_tools(self.pid)

    def waiting(self, key: str) -> dict[str, Any] | None:
        """The request call `key` waits on, if it waits for a person."""
        call = self._calls.get(key)
        return call.asked if call is not None and not call.done else None

    def waiting_calls(self) -> dict[str, str]:
        """Every call that waits for a person: its key, and the tool it calls."""
        return {key: call.name for key, call in self._calls.items()
                if call.asked is not None and not call.done}

    async def start(self, key: str, name: Any, args: Any) -> Outcome:
        """Run tool `name` with `args` as call `key` until it ends or asks a person."""
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            return _error(Conflict(f"a call id must be 1 to {MAX_KEY} characters"))
        if key in self._calls:
            return _error(Conflict(f"call id {key[:64]!r} is already in use"))
        if len(self._calls) >= MAX_CALLS:
            return _error(LimitExceeded(f"more than {MAX_CALLS} calls in flight"))
        try:
            vet_arguments(args)
        except InvalidArgument as exc:
            return _error(exc)
        call = self._calls[key] = _Call(key, name if isinstance(name, str) else repr(name),
                                        args, self.pid)
        self._nursery.start_soon(self._run, call, name, args)
        return await self._next(call)

    async def answer(self, key: str, approve: bool) -> Outcome:
        """The framework's person answered the request call `key` waits on: approve it once
        (exactly its arguments) or deny it, then follow the call to its next stop."""
        call = self._calls.get(key)
        if call is None or call.asked is None:
            return _error(NotFound(f"no call {str(key)[:64]!r} waits for an answer"))
        request, call.asked = call.asked, None
        try:
            if approve:  # over the request as the framework showed it (red team 44)
                self.kernel.approve(request["id"], who=self.who, shown=request.get("digest"))
            else:
                self.kernel.deny(request["id"], who=self.who)
        except LibosError:
            now = [r for r in self.kernel.approvals() if r["id"] == request["id"]]
            if approve and now and now[0]["digest"] != request.get("digest"):
                # (edited since the framework showed it: its person is shown it again)
                call.asked = now[0]
                return Asked(now[0], fresh=True)
            # else settled meanwhile (expired, cancelled, answered elsewhere): the call says how
        return await self._next(call)

    async def take_up(self, key: str, name: str, args: Any) -> Outcome | None:
        """The framework comes back for call `key` as `name(args)`: that very call's state (an
        answer binds to what was shown) — the request it still waits on, or, answered
        meanwhile elsewhere (the CLI, the page), where it has got to since: a request filed
        since is `fresh`, never answered by what the framework holds. None, once any other
        call under that key (another tool, other arguments by `args_hash`) is dropped: the
        framework then starts it afresh."""
        call = self._calls.get(key)
        if call is None or call.name != name or not _same(call.args, args):
            self.drop(key)
            return None
        if call.asked is not None and not call.done and self._pending(call.asked["id"]):
            return Asked(call.asked)
        call.asked = None
        outcome = await self._next(call)
        while isinstance(outcome, Asked) and not self._pending(outcome.request["id"]):
            call.asked = None  # (filed and settled elsewhere since, too)
            outcome = await self._next(call)
        # (A request filed since: the answer the framework comes back with was never for it.)
        return Asked(outcome.request, fresh=True) if isinstance(outcome, Asked) else outcome

    def _pending(self, approval_id: str) -> bool:
        try:
            return self.kernel.store.get_approval(approval_id)["state"] == "pending"
        except LibosError:
            return False

    async def follow(self, key: str) -> Outcome:
        """Leave the request call `key` waits on to libos's approval queue (the CLI, the web
        page, an approver, its deadline) and follow the call to its next stop."""
        call = self._calls.get(key)
        if call is None:
            return _error(NotFound(f"no call {str(key)[:64]!r}"))
        call.asked = None
        return await self._next(call)

    def drop(self, key: str) -> None:
        """The framework will not come back for call `key`: stop it; what it asked is
        settled as cancelled."""
        call = self._calls.pop(key, None)
        if call is not None:
            call.scope.cancel()

    def close(self) -> None:
        for key in list(self._calls):
            self.drop(key)

    async def _run(self, call: _Call, name: Any, args: Any) -> None:
        _current.set(call)
        outcome = _error(Cancelled("the call was cancelled"))
        with call.scope:
            try:
                outcome = Done(True, await self.kernel.call_tool(self.pid, name, args))
            except LibosError as exc:
                outcome = _error(exc)
            except Exception as exc:  # never the broker: a failed call is a failed call
                outcome = Done(False, {"code": "INTERNAL", "message": repr(exc)[:500]})
        call.done = True
        call.events[0].send_nowait(outcome)

    async def _next(self, call: _Call) -> Outcome:
        outcome = await call.events[1].receive()
        if isinstance(outcome, Asked):
            call.asked = outcome.request
        else:
            self._calls.pop(call.key, None)
        return outcome

    # -- from the framework's thread -------------------------------------------------------------

    def blocking(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run `fn(*args)` (a gate method) in the kernel's trio thread, from another thread."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def blocking_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    async def from_asyncio(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """`blocking`, awaited from an asyncio loop (through one worker thread)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.blocking, fn, *args))

    async def from_asyncio_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(self.blocking_sync, fn, *args))


async def run_asyncio(fn: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any) -> Any:
    """From trio: run an asyncio framework's coroutine function to its end in a worker thread
    (its own event loop), while the kernel keeps serving its calls."""
    return await trio.to_thread.run_sync(lambda: asyncio.run(fn(*args, **kwargs)))


async def run_sync(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """From trio: run a synchronous framework call in a worker thread."""
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))
