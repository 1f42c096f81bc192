"""What one process may hold or write, beyond a single call's `CallLimits`: live sandboxes,
concurrent subprocesses and requests, and log output (each line charged a minimum size).

`ProcessLimits` are the settings (a `Kernel.open` option); `Bounds` applies them for a kernel.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from broker.errors import LimitExceeded
from broker.kernel.approval_slots import DEFAULT_MAX_PENDING
from broker.kernel.slots import Slots
from broker.store.checkpoints import DEFAULT_KEEP
from sandboxes.base import CallLimits

if TYPE_CHECKING:
    from broker.kernel.invocation import Invocation
    from broker.kernel.process import AgentProcess


@dataclass(frozen=True, slots=True)
class ProcessLimits:
    """Per-process bounds (and one per broker). Past a concurrency bound a call waits for a
    slot until its deadline, then fails with `LimitExceeded`; past the log bound the call
    that logs fails with `LimitExceeded`."""

    sandboxes: int = 12            # sandboxed tool calls in flight per process (nested included)
    broker_sandboxes: int = 32     # ... in the whole broker
    shell: int = 4                 # shell.run in flight per process
    fetch: int = 8                 # net.fetch in flight per process
    log_bytes: int = 16 << 20      # log output a process may store over its life
    log_line_bytes: int = 64       # the least a log line costs, however short
    approvals: int = DEFAULT_MAX_PENDING  # approval requests and questions pending per process
    checkpoints: int = DEFAULT_KEEP  # checkpoints each process keeps to fork from (latest too)
    descendants: int = 256         # live processes below one process (children, theirs, ...)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"ProcessLimits.{f.name} must be a positive int, not {value!r}")


class Bounds:
    def __init__(self, limits: ProcessLimits, *, tool_depth: int, deadline: float) -> None:
        self.limits = limits
        self.deadline = deadline  # for a syscall outside any tool call
        self.sandboxes = Slots("sandbox", limits.sandboxes, limits.broker_sandboxes,
                               levels=tool_depth)
        self.syscalls = {"shell.run": Slots("shell.run", limits.shell),
                         "net.fetch": Slots("net.fetch", limits.fetch)}

    def sandbox(self, inv: Invocation) -> AbstractAsyncContextManager[CallLimits]:
        """A live-sandbox slot for a sandboxed call; yields its limits with the time spent
        waiting taken off its deadline. (A slot free at once, the usual case, is taken
        without an async generator.)"""
        return _SandboxSlot(self, inv)

    @asynccontextmanager
    async def _sandbox_waiting(self, inv: Invocation) -> AsyncIterator[CallLimits]:
        async with self.sandboxes.hold(inv.pid, timeout=remaining(inv),
                                       depth=inv.depth) as waited:
            limits = inv.limits
            yield limits if not waited else replace(limits, deadline=limits.deadline - waited)

    def check(self, pid: int, caller: Invocation | None) -> AbstractAsyncContextManager[float]:
        """A live-sandbox slot for a run-time registration's check, which runs the tool's
        module in a sandbox bound to its first call's authority (a manifest makes a new one):
        taken one level below its caller's, as a nested call's would be, and waited for until
        the caller's deadline."""
        if caller is None:
            return self.sandboxes.hold(pid, timeout=self.deadline)
        return self.sandboxes.hold(pid, timeout=remaining(caller), depth=caller.depth + 1)

    def syscall(self, pid: int, inv: Invocation | None,
                name: str) -> AbstractAsyncContextManager[object]:
        """A slot for a syscall with a concurrency bound (nothing for the others: no async
        generator made for every call), waited for until the call's deadline."""
        slots = self.syscalls.get(name)
        if slots is None:
            return _NO_SLOT
        return slots.hold(pid, timeout=remaining(inv) if inv is not None else self.deadline)

    def charge_log(self, proc: AgentProcess, inv: Invocation, text: str) -> None:
        """Charge a log line to its call's output cap and its process's log bound: at least
        `log_line_bytes`, so empty lines are not free. Past either, `LimitExceeded`."""
        cost = max(len(text), self.limits.log_line_bytes)
        inv.output_bytes += cost
        if inv.output_bytes > inv.limits.max_output_bytes:
            raise LimitExceeded(f"tool {inv.tool} wrote more than "
                                f"{inv.limits.max_output_bytes} bytes of output (each log "
                                f"line counts at least {self.limits.log_line_bytes})")
        proc.usage.log_bytes += cost
        if proc.usage.log_bytes > self.limits.log_bytes:
            raise LimitExceeded(f"process {proc.pid} logged more than "
                                f"{self.limits.log_bytes} bytes")


class _SandboxSlot:
    """`Bounds.sandbox`: a slot free at once is taken and given back here; otherwise the
    call waits for one (`Bounds._sandbox_waiting`)."""

    __slots__ = ("bounds", "inv", "waiting")

    def __init__(self, bounds: Bounds, inv: Invocation) -> None:
        self.bounds, self.inv = bounds, inv
        self.waiting: AbstractAsyncContextManager[CallLimits] | None = None

    async def __aenter__(self) -> CallLimits:
        inv = self.inv
        if self.bounds.sandboxes.take_if_free(inv.pid, inv.depth):
            return inv.limits
        self.waiting = self.bounds._sandbox_waiting(inv)
        return await self.waiting.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        if self.waiting is None:
            self.bounds.sandboxes.release(self.inv.pid)
            return None
        return await self.waiting.__aexit__(*exc)


class _NoSlot:
    """The slot of a syscall without a concurrency bound: nothing to hold."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_SLOT = _NoSlot()


def remaining(inv: Invocation) -> float:
    """Seconds left before the call's deadline."""
    return inv.limits.deadline - (time.monotonic() - inv.started)
