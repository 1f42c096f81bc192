"""The warm pool of a Deno driver: started spares and idle sandboxes by authority.

`spares` unbound sandboxes are kept started (hello received), so a call whose authority has no
idle sandbox binds a spare instead of waiting for a process start; after a call its sandbox
goes back to the idle list of its authority (bounded per authority and in total, least
recently used evicted first). A sandbox is bound to one authority for its whole life: a spare,
once taken, is never unbound.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

import trio

from broker.errors import SandboxCrashed
from sandboxes.deno_process import DenoProcess

log = logging.getLogger("libos.sandboxes.deno")


class WarmPool:
    """Spares and idle sandboxes; `stats` counts warm and spare acquisitions."""

    def __init__(self, *, spares: int, max_idle_per_authority: int, max_idle: int,
                 memory_mb: int, stats: dict[str, int], refill: bool = True) -> None:
        self.spares = spares
        # Spares yet to start: without refill (a run that knows it needs `spares` sandboxes
        # at most, like `libos demo`), a spare taken is not replaced.
        self.spares_left: int | None = None if refill else spares
        self.max_idle_per_authority = max_idle_per_authority
        self.max_idle = max_idle
        self.memory_mb = memory_mb
        self.stats = stats
        self.closed = False
        self.idle: dict[tuple[str | None, int], list[DenoProcess]] = {}
        self.lru: OrderedDict[DenoProcess, None] = OrderedDict()
        self.ready: deque[DenoProcess] = deque()
        self.spare_starting = 0
        self.want_spares = trio.Event()
        self.spare_done = trio.Event()  # set (and replaced) as each spare's start ends

    async def refill(self, start: Callable[[int], Awaitable[DenoProcess]]) -> None:
        """Keep `spares` sandboxes started (a task of the driver's service)."""
        while True:
            while (len(self.ready) + self.spare_starting < self.spares and not self.closed
                   and self.spares_left != 0):
                if self.spares_left is not None:
                    self.spares_left -= 1
                self.spare_starting += 1
                try:
                    sb = await start(self.memory_mb)
                except Exception as exc:  # never let the service die of it: calls start cold
                    log.warning("could not start a spare Deno sandbox: %s", exc)
                    await trio.sleep(1)
                    continue
                finally:
                    self.spare_starting -= 1
                    self.spare_done.set()
                    self.spare_done = trio.Event()
                self.ready.append(sb)
            self.want_spares = trio.Event()
            await self.want_spares.wait()

    def take(self, authority: str, memory_mb: int) -> DenoProcess | None:
        """An idle sandbox of this authority, else a ready spare bound to it, else None."""
        idle = self.idle.get((authority, memory_mb))
        while idle:
            sb = idle.pop()
            self.lru.pop(sb, None)
            if sb.idle_ok():
                self.stats["warm_acquires"] += 1
                return sb
        if memory_mb == self.memory_mb:
            while self.ready:
                sb = self.ready.popleft()
                self.want_spares.set()
                if sb.idle_ok():
                    sb.authority = authority
                    self.stats["spare_acquires"] += 1
                    return sb
        return None

    async def take_starting(self, authority: str, timeout: float) -> DenoProcess | None:
        """A spare being started, bound to `authority` once it is ready: waiting for it costs
        less than starting another process beside it. None when none is starting."""
        with trio.move_on_after(timeout):
            while self.spare_starting and not self.closed:
                await self.spare_done.wait()
                sb = self.take(authority, self.memory_mb)
                if sb is not None:
                    return sb
        return None

    def release(self, sb: DenoProcess) -> None:
        """A sandbox whose call ended cleanly goes back to its authority's idle list."""
        if sb.dead or self.closed:
            return
        idle = self.idle.setdefault(sb.key, [])
        if len(idle) >= self.max_idle_per_authority:
            sb.kill(SandboxCrashed("evicted"))
            return
        idle.append(sb)
        self.lru[sb] = None
        while len(self.lru) > self.max_idle:
            oldest, _ = self.lru.popitem(last=False)
            self.idle[oldest.key].remove(oldest)
            oldest.kill(SandboxCrashed("evicted"))

    def forget(self, sb: DenoProcess) -> None:
        """A sandbox that has exited leaves the pool (a spare is started in its place)."""
        self.lru.pop(sb, None)
        idle = self.idle.get(sb.key)
        if idle and sb in idle:
            idle.remove(sb)
        if sb in self.ready:
            self.ready.remove(sb)
            self.want_spares.set()
