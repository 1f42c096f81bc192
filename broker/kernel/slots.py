"""Slots: how many of one kind of thing (live sandboxes, subprocesses, outgoing requests) a
process, and the broker as a whole, may hold at once.

A holder beyond a bound waits for a slot until its deadline, then fails with
`LimitExceeded`. Slots are handed over on release to the oldest waiter that may take one
(woken, not polled), so a newcomer only gets room that no waiter could use.

Nested tool calls hold a sandbox each while their callers wait for them, so a bound on live
sandboxes could deadlock: a fan-out fills every slot with callers whose children then wait
for ever. Levels prevent it: a holder at nesting depth `d` of `levels` may only take a slot
while fewer than `limit - (levels - 1 - d)` are held (but at least `d + 1`, room for its
callers and itself), keeping room for every level below. The deepest holders can then always
get a slot for their children, so some call always completes (for chains up to `limit`
deep).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from broker.errors import LimitExceeded


@dataclass(eq=False, slots=True)
class _Waiter:
    pid: int
    depth: int
    granted: trio.Event = field(default_factory=trio.Event)


class Slots:
    def __init__(self, what: str, per_process: int, total: int | None = None, *,
                 levels: int = 1) -> None:
        if per_process < 1 or (total is not None and total < 1) or levels < 1:
            raise ValueError(f"{what}: limits must be at least 1")
        self.what = what
        self.per_process = per_process
        self.total = total
        self.levels = levels
        self._held: dict[int, int] = {}
        self._total = 0
        self._waiting: deque[_Waiter] = deque()

    def held(self, pid: int | None = None) -> int:
        return self._total if pid is None else self._held.get(pid, 0)

    def _cap(self, limit: int, depth: int) -> int:
        """How many may be held when a holder at `depth` takes one (see the module doc)."""
        depth = min(depth, self.levels - 1)
        return min(limit, max(depth + 1, limit - (self.levels - 1 - depth)))

    def _free(self, pid: int, depth: int) -> bool:
        if self._held.get(pid, 0) >= self._cap(self.per_process, depth):
            return False
        return self.total is None or self._total < self._cap(self.total, depth)

    def _take(self, pid: int) -> None:
        self._held[pid] = self._held.get(pid, 0) + 1
        self._total += 1

    def _give_back(self, pid: int) -> None:
        left = self._held[pid] - 1
        if left:
            self._held[pid] = left
        else:
            del self._held[pid]
        self._total -= 1
        # Hand the freed room to the oldest waiters that may take it.
        for waiter in list(self._waiting):
            if self._free(waiter.pid, waiter.depth):
                self._waiting.remove(waiter)
                self._take(waiter.pid)
                waiter.granted.set()
            if self.total is not None and self._total >= self.total:
                break

    def take_if_free(self, pid: int, depth: int = 0) -> bool:
        """Take a slot for `pid` if one is free now (give it back with `release`); False,
        taking nothing, if the holder would have to wait (`hold` waits)."""
        if not self._free(pid, depth):
            return False
        self._take(pid)
        return True

    def release(self, pid: int) -> None:
        """Give back a slot `take_if_free` took."""
        self._give_back(pid)

    @asynccontextmanager
    async def hold(self, pid: int, *, timeout: float, depth: int = 0) -> AsyncIterator[float]:
        """Hold one slot for `pid` while the block runs; yields the seconds spent waiting.
        Raises `LimitExceeded` if none is free within `timeout` seconds."""
        waited = 0.0
        if self._free(pid, depth):
            self._take(pid)  # free room no waiter could use (release hands it over first)
        else:
            waiter = _Waiter(pid, depth)
            self._waiting.append(waiter)
            start = trio.current_time()
            try:
                with trio.move_on_after(max(0.0, timeout)):
                    await waiter.granted.wait()
            except BaseException:
                if waiter.granted.is_set():
                    self._give_back(pid)
                else:
                    self._waiting.remove(waiter)
                raise
            if not waiter.granted.is_set():  # granted as the wait was cut: it still holds
                self._waiting.remove(waiter)
                raise LimitExceeded(self._busy(pid, timeout))
            waited = trio.current_time() - start
        try:
            yield waited
        finally:
            self._give_back(pid)

    def _busy(self, pid: int, timeout: float) -> str:
        bound = (f"{self.held(pid)} of {self.per_process} held by process {pid}"
                 if self.total is None else
                 f"{self.held(pid)} of {self.per_process} held by process {pid}, "
                 f"{self._total} of {self.total} in the broker")
        return f"no {self.what} slot free within {timeout:g} s ({bound})"
