"""A bound on the approval requests one process has pending at once.

A person can weigh a handful of requests from one process, not a thousand; and each pending
request holds a waiting call. So a process may have at most `limit` requests pending; a call
beyond that waits, in order, for one of them to be settled, and fails with `LimitExceeded`
when its deadline (the one its request would have had) comes first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from broker.errors import LimitExceeded
from broker.providers.clock import Clock, RealClock

DEFAULT_MAX_PENDING = 16


async def before_deadline(clock: Clock, deadline: float,
                          wait: Callable[[], Awaitable[object]]) -> bool:
    """Run `wait()` until it returns (True) or the kernel's clock reaches `deadline` (False,
    with `wait` cancelled). The kernel's clock may be a fake one that tests move by hand."""
    if isinstance(clock, RealClock):
        # The real clock is trio's clock's wall-time twin: a cancel scope, no timer task.
        with trio.move_on_after(max(0.0, deadline - clock.now())):
            await wait()
            return True
        return False
    finished = False
    async with trio.open_nursery() as nursery:

        async def timer() -> None:
            await clock.sleep(max(0.0, deadline - clock.now()))
            nursery.cancel_scope.cancel()

        nursery.start_soon(timer)
        await wait()
        finished = True
        nursery.cancel_scope.cancel()
    return finished


class PendingSlots:
    """Per-process slots for pending requests: FIFO, woken when a slot frees, never polled."""

    def __init__(self, clock: Clock, limit: int = DEFAULT_MAX_PENDING) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("the pending approval limit is a positive integer")
        self.clock = clock
        self.limit = limit
        self._slots: dict[int, trio.Semaphore] = {}

    def pending(self, pid: int) -> int:
        """How many slots of process `pid` are taken."""
        slots = self._slots.get(pid)
        return 0 if slots is None else self.limit - slots.value

    def waiting(self, pid: int) -> int:
        """How many calls of process `pid` wait for a slot."""
        slots = self._slots.get(pid)
        return 0 if slots is None else slots.statistics().tasks_waiting

    async def acquire(self, pid: int, deadline: float) -> None:
        """Take a slot, waiting in order until the deadline; `LimitExceeded` after it."""
        slots = self._slots.get(pid)
        if slots is None:
            slots = self._slots[pid] = trio.Semaphore(self.limit)
        try:
            slots.acquire_nowait()  # the usual case: no timer task needed
            return
        except trio.WouldBlock:
            pass
        taken = False

        async def take() -> None:
            nonlocal taken
            await slots.acquire()
            taken = True

        try:
            await before_deadline(self.clock, deadline, take)
        except BaseException:
            if taken:  # cancelled just after the slot was handed over: give it back
                slots.release()
            raise
        finally:
            self._forget_if_idle(pid)
        if taken and self.clock.now() >= deadline:
            slots.release()  # handed over as the deadline came: too late to ask anyone
            taken = False
        if not taken:
            raise LimitExceeded(f"process {pid} already has {self.limit} approval requests "
                                "pending; no slot freed before the deadline")

    def release(self, pid: int) -> None:
        self._slots[pid].release()
        self._forget_if_idle(pid)

    def _forget_if_idle(self, pid: int) -> None:
        slots = self._slots.get(pid)
        if slots is not None and slots.value == self.limit and not (
                slots.statistics().tasks_waiting):
            del self._slots[pid]
