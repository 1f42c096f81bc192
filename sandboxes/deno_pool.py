"""The warm pool of a Deno driver: started spares and idle sandboxes by authority.

`spares` unbound sandboxes are kept started (hello received), so a call whose authority has no
idle sandbox binds a spare instead of waiting for a process start; after a call its sandbox
goes back to the idle list of its authority (bounded per authority and in total, least
recently used evicted first). A sandbox is bound to one authority for its whole life: a spare,
once taken, is never unbound.

The spare taken is replaced once its first call has ended (or it died), or `REFILL_DELAY`
seconds after it was taken, whichever comes first: a Deno start takes tens of ms of CPU on
every core it finds, and started at once it would share them with the check and the first
call of the tool it was taken for (a registration's, or a new authority's first call).

A sandbox evicted from the idle lists (past `max_idle_per_authority` or `max_idle`) is out of
them at once, so no call gets it, but killed by the pool's own task (`kill_evicted`) once the
spare last taken has answered its first call, as the refill waits: a Deno process's exit (its
heap unmapped) costs a few ms of CPU, which a registration's check and first call, where the
eviction usually comes from, would otherwise share (issue #17). Until then it is one of the
driver's processes like any other: closing the driver kills it. At most `MAX_WAITING_EVICTED`
wait (a burst of evictions kills the older at once), so the live processes stay within the
pool's bounds plus that.

An idle sandbox should use no CPU: code a tool left running after its call (a timer the
runtime does not see, spinning microtasks) is outside every call's deadline. `watch_idle`
looks at each idle sandbox every `IDLE_WINDOW` seconds and kills one that has used more than
`IDLE_CPU_BUDGET` seconds of CPU since it was first seen idle, however thinly it spreads them
(a sandbox idle after a call uses a few tens of ms, then nothing).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

import trio

from broker.errors import SandboxCrashed
from broker.protocol import WarmUp
from sandboxes.deno_channel import write
from sandboxes.deno_process import DenoProcess

log = logging.getLogger("libos.sandboxes.deno")

# At most this long (seconds) between taking a spare and starting the next one.
REFILL_DELAY = 0.1
IDLE_WINDOW = 1.0
IDLE_CPU_BUDGET = 1.0
# At most this many evicted sandboxes wait for `kill_evicted`; past it the oldest is killed now.
MAX_WAITING_EVICTED = 1


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
        self.lru: OrderedDict[DenoProcess, int] = OrderedDict()
        self.ready: deque[DenoProcess] = deque()
        self.spare_starting = 0
        self.want_spares = trio.Event()
        self.spare_done = trio.Event()  # set (and replaced) as each spare's start ends
        # The spare last taken, until its first call has ended: the refill waits for it.
        self.held: DenoProcess | None = None
        self.held_until = 0.0
        self.hold_done = trio.Event()
        self.hurried = False  # told to go on now: a spare is about to start
        self.releases = 0  # how many times a sandbox went idle (the idle watch's clock)
        self.evicted: list[DenoProcess] = []  # out of the idle lists, for `kill_evicted`
        self.evicting = trio.Event()

    async def refill(self, start: Callable[[int], Awaitable[DenoProcess]],
                     warm_up: bool = False) -> None:
        """Keep `spares` sandboxes started (a task of the driver's service); with `warm_up`,
        each one nobody was waiting for as it started is told to warm up (`warm_up`)."""
        while True:
            while (len(self.ready) + self.spare_starting < self.spares and not self.closed
                   and self.spares_left != 0):
                if self.held is not None:  # a spare just taken has not answered yet
                    with trio.move_on_at(self.held_until):
                        await self.hold_done.wait()
                    self.settled(self.held)
                    continue
                if self.spares_left is not None:
                    self.spares_left -= 1
                self.spare_starting += 1
                self.hurried = False
                try:
                    sb = await start(self.memory_mb)
                    wanted = self.spare_done.statistics().tasks_waiting > 0
                except Exception as exc:  # never let the service die of it: calls start cold
                    log.warning("could not start a spare Deno sandbox: %s", exc)
                    await trio.sleep(1)
                    continue
                finally:
                    self.spare_starting -= 1
                    self.spare_done.set()
                    self.spare_done = trio.Event()
                self.ready.append(sb)
                if warm_up and not wanted:
                    await self.warm_up(sb)
            if self.hurried:  # nothing to start after all: whoever waits, waits no more
                self.hurried = False
                self.spare_done.set()
                self.spare_done = trio.Event()
            self.want_spares = trio.Event()
            await self.want_spares.wait()

    async def warm_up(self, sb: DenoProcess) -> None:
        """Tell a spare that it may warm up (a `WarmUp` frame; ts-runtime/main.ts says what it
        does). Never one a call or a check waits for as it starts: that gets its first frame
        at once instead, which the warm-up's round under way would delay (issue #17)."""
        if sb.dead or sb.conn.broken:
            return
        await write(sb, sb.conn.send(WarmUp()))
        self.stats["warm_ups"] += 1

    def take(self, authority: str, memory_mb: int) -> DenoProcess | None:
        """An idle sandbox of this authority, else a ready spare bound to it, else None."""
        idle = self.idle.get((authority, memory_mb))
        while idle:
            sb = idle.pop()
            self._unlist(sb)
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
                    self._hold(sb)
                    return sb
        return None

    def _hold(self, sb: DenoProcess) -> None:
        """Start the next spare once `sb` has answered its first call (see the module)."""
        self.settled(self.held)
        self.held, self.held_until = sb, trio.current_time() + REFILL_DELAY

    def settled(self, sb: DenoProcess | None) -> None:
        """`sb`'s call has ended (or it died, or nobody waits any more): if the refill was
        waiting for it, it goes on."""
        if sb is not None and sb is self.held:
            self.held = None
            self.hold_done.set()
            self.hold_done = trio.Event()

    def hurry(self) -> None:
        """A call found no spare: whatever the refill waits for, it starts the next now."""
        if self.held is not None:
            self.hurried = True
            self.settled(self.held)
        self.want_spares.set()

    async def take_starting(self, authority: str, timeout: float) -> DenoProcess | None:
        """A spare being started, bound to `authority` once it is ready: waiting for it costs
        less than starting another process beside it. None when none is starting."""
        if self.held is not None:
            self.hurry()  # the spare held back starts now
        with trio.move_on_after(timeout):
            while (self.spare_starting or self.hurried) and not self.closed:
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
            self._evict(sb)
            return
        idle.append(sb)
        self.releases += 1
        self.lru[sb] = self.releases  # when it went idle: a call between two looks resets it
        while len(self.lru) > self.max_idle:
            oldest = next(iter(self.lru))
            self._unlist(oldest)
            self._evict(oldest)

    def _evict(self, sb: DenoProcess) -> None:
        """`sb`, in no idle list, is killed by `kill_evicted`: not on the path of the call or
        the check that released it (see the module)."""
        self.evicted.append(sb)
        while len(self.evicted) > MAX_WAITING_EVICTED:  # a burst: the live count stays bounded
            self.evicted.pop(0).kill(SandboxCrashed("evicted"))
        self.evicting.set()

    async def look_after(self) -> None:
        """The pool's own tasks but the refill (a task of the driver's service): the idle
        watch and the kills of evicted sandboxes."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.watch_idle)
            nursery.start_soon(self.kill_evicted)

    async def kill_evicted(self) -> None:
        """Kill the evicted sandboxes once the spare last taken has answered its first call
        (or `REFILL_DELAY` after it was taken), each batch at once (the driver's close kills
        what is left)."""
        while True:
            await self.evicting.wait()
            self.evicting = trio.Event()
            held = self.held
            with trio.move_on_at(self.held_until):
                while held is not None and self.held is held:
                    await self.hold_done.wait()
            doomed, self.evicted = self.evicted, []
            for sb in doomed:
                sb.kill(SandboxCrashed("evicted"))

    def kill_idle(self, key: str, which: Callable[[DenoProcess], bool],
                  reason: SandboxCrashed) -> None:
        """Kill the idle sandboxes bound to `key` that `which` picks."""
        for (bound, _), idle in list(self.idle.items()):
            if bound == key:
                for sb in [sb for sb in idle if which(sb)]:
                    self._unlist(sb)
                    sb.kill(reason)

    def _unlist(self, sb: DenoProcess) -> None:
        """`sb` is idle no more: out of its authority's list, and the list out of `idle` once
        empty (an authority's key would stay after its process ended: one per process)."""
        self.lru.pop(sb, None)
        idle = self.idle.get(sb.key)
        if idle is not None and sb in idle:
            idle.remove(sb)
        if not idle:
            self.idle.pop(sb.key, None)

    async def watch_idle(self) -> None:
        """Kill idle sandboxes that keep using the CPU."""
        # CPU seconds of each idle sandbox when first seen idle, since it last went idle.
        first_seen: dict[DenoProcess, tuple[int, float]] = {}
        while not self.closed:
            await trio.sleep(IDLE_WINDOW)
            now_idle = dict(self.lru)
            for sb in [sb for sb in first_seen if sb not in now_idle]:
                del first_seen[sb]  # taken for a call, or gone: watched afresh when idle again
            for sb, went_idle in now_idle.items():
                used = sb.cpu_seconds()
                if used is None:
                    continue
                seen = first_seen.get(sb)
                if seen is None or seen[0] != went_idle:  # (a call ran since the last look)
                    first_seen[sb] = (went_idle, used)
                elif used - seen[1] > IDLE_CPU_BUDGET:
                    del first_seen[sb]
                    self.forget(sb)
                    sb.kill(SandboxCrashed("it kept using the CPU while idle (code a tool left "
                                           "running after its call)"))
                    log.warning("killed an idle sandbox of %s: it kept using the CPU",
                                sb.authority)

    def forget(self, sb: DenoProcess) -> None:
        """A sandbox that has exited leaves the pool (a spare is started in its place)."""
        self.settled(sb)
        self._unlist(sb)
        if sb in self.ready:
            self.ready.remove(sb)
            self.want_spares.set()
