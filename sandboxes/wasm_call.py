"""One WebAssembly call in progress: the state the guest ABI's host functions and the
scheduler share, and the checks of its deadline and cancellation.

Host functions and the store's epoch callback run on the thread running the wasm; they find
the call through a thread-local (`current.call`). Nothing here touches guest memory (that is
`sandboxes/wasm_abi.py`) or decides where a call runs (`sandboxes/wasm_schedule.py`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from broker.errors import Cancelled, LimitExceeded
from sandboxes import wasm_ffi as F
from sandboxes.base import CallLimits, SyscallHost

PAGE = 65536


class Restart(Exception):
    """The inline attempt must be abandoned and the call re-run in a worker thread."""


class Stop(Exception):
    """Raised inside a host function: end the call with `reason`."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


@dataclass(slots=True)
class WasmCall:
    """One call in progress; host functions find it through a thread-local."""

    host: SyscallHost
    limits: CallLimits
    deadline: float                     # time.monotonic()
    inline: bool
    inline_deadline: float = 0.0        # time.perf_counter(), inline attempts only
    fuel: int = 0
    memory_limit: int = 0
    capped: bool = False                # an inline attempt with less memory than the call
    final_memory: int = 0
    ctx: Any = None
    memory: Any = None
    alloc: Any = None
    stop: BaseException | None = None
    cancelled: bool = False
    syscalls: int = 0
    output: int = 0
    logs: list[tuple[str, str]] = field(default_factory=list)
    # (request region or bytes, response) of each syscall answered by the inline attempt,
    # and, in the re-run, how many of them have been replayed.
    record: list[tuple[Any, bytes]] = field(default_factory=list)
    replay: list[tuple[Any, bytes]] = field(default_factory=list)
    replayed: int = 0

    def time_up(self) -> BaseException | None:
        if not self.inline and not self.cancelled:
            try:
                trio.from_thread.check_cancelled()
            except trio.Cancelled:
                self.cancelled = True
            except RuntimeError:
                pass  # not in a trio worker thread (only a direct, synchronous attempt)
        if self.cancelled:
            return Cancelled("the call was cancelled")
        if time.monotonic() >= self.deadline:
            return LimitExceeded(f"wasm tool ran past its deadline of {self.limits.deadline} s")
        if self.inline and time.perf_counter() >= self.inline_deadline:
            return Restart("inline slice spent")
        return None

    def end(self, reason: BaseException) -> None:
        if self.stop is None:
            self.stop = reason

    def near_cap(self, size: int) -> bool:
        """A capped (inline) attempt whose memory is within 1/16 of its cap."""
        return self.capped and size + max(PAGE, self.memory_limit // 16) > self.memory_limit

    def wait_for(self, name: str, args: Any) -> Any:
        """A syscall that waits, from the worker thread: in trio, bounded by the deadline."""

        async def bounded() -> Any:
            with trio.move_on_at(trio.current_time() + self.deadline - time.monotonic()):
                return await self.host.syscall(name, args)
            raise Stop(LimitExceeded(f"wasm tool ran past its deadline of "
                                     f"{self.limits.deadline} s (in {name})"))

        try:
            return trio.from_thread.run(bounded)
        except trio.Cancelled:
            self.cancelled = True
            raise Stop(Cancelled("the call was cancelled")) from None
        except trio.RunFinishedError:
            raise Stop(Cancelled("the broker is shutting down")) from None


current = threading.local()


@F.EpochCallback
def on_epoch(ctx: Any, data: Any, delta: Any, kind: Any) -> int:
    """The store's epoch callback: end the call if its deadline or cancellation has come."""
    try:
        call = getattr(current, "call", None)
        if call is None:
            return F.new_error("epoch deadline outside a call")
        reason = call.time_up()
        if reason is not None:
            call.end(reason)
            return F.new_error(str(reason))
        return F.continue_for(delta, kind, 1)
    except BaseException:  # never let an exception cross the C boundary
        return F.new_error("epoch callback failed")
