"""Leases in the kernel: many brokers over one PostgreSQL store (issue 18), each running the
live processes it holds a lease on (`broker.store.leases`), and only those.

A broker opened with an identity (`Kernel.open(..., broker="b1")`) takes the lease of every
process it spawns, and takes work from the store: a live process nobody holds (new, its
broker closed, or its lease expired because that broker died, froze or lost the database) is
taken by whichever broker gets its lease first, and resumes from its last checkpoint with the
rules of crash recovery (`recovery.resume`). Leases are renewed every third of their ttl.

Fencing: a leased process's task runs with its lease in `FENCE`, so each of its writes checks
the lease in the write's own transaction. A broker that lost a lease (it froze past the
expiry and another took the process) has its next write refused with `LeaseLost`, and gives
the process up: its task is cancelled and it leaves the table, with nothing written. A
broker that can no longer reach the store gives up every process (their leases expire, and
brokers that can reach it take them) and takes work again once the store answers.

Without an identity (the embedded default, SQLite or one broker on PostgreSQL) nothing
here acts: `mine` is always true, and no lease is taken.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio

from broker.errors import Conflict, NotFound
from broker.kernel import recovery
from broker.kernel.recent import Recent
from broker.kernel.revived import Held
from broker.lifecycle import LIVE
from broker.store.leases import FENCE, Lease, LeaseLost
from broker.store.pg_connection import StoreUnavailable
from broker.store.vouch import Tampered

if TYPE_CHECKING:
    from broker.kernel.ports import LeasingNeeds
    from broker.kernel.process import AgentProcess

log = logging.getLogger("libos.kernel")

LEASE_TTL = 5.0  # seconds a lease lasts unrenewed: how soon another broker takes over
CLAIM_POLL = 0.2  # how often a broker looks for work
CLAIM_BATCH = 4  # processes taken per look: brokers starting together share the work
NEW_GRACE = 2.0  # a process younger than this without a lease is its spawner's to lease
_LIVE = frozenset(state.value for state in LIVE)  # (a row's state as stored)


class HeldElsewhere(Conflict):
    """The process is run by another broker (`holder`) now: act on it through the store
    (`broker.kernel.remote`)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


class Leasing:
    def __init__(self, kernel: LeasingNeeds, identity: str | None,
                 ttl: float = LEASE_TTL) -> None:
        self.kernel = kernel
        self.identity = identity
        self.ttl = ttl
        self.held: dict[int, Lease] = {}
        # For the operator and tests: (pid, why) of processes given up, and processes that
        # ended here while leased; the newest of each, and their totals (`Recent`).
        self.given_up: Recent[tuple[int, str]] = Recent()
        self.ended: Recent[int] = Recent()
        # Processes held for an unsigned end (`revived.Held`): live rows never run, so not
        # taken again at every look for work (until they end or are taken: `_settle_unrun`).
        self.unrun: set[int] = set()
        self._renewed = 0.0

    @property
    def active(self) -> bool:
        return self.identity is not None

    def mine(self, pid: int | None) -> bool:
        """Whether this broker runs process `pid` (always, without leases)."""
        return not self.active or pid in self.held

    def lease(self, pid: int) -> Lease | None:
        return self.held.get(pid)

    @contextmanager
    def fenced(self, pid: int) -> Iterator[None]:
        """The block's writes are process `pid`'s, fenced by its lease (a host's call on it,
        outside the process's own task); a lease found lost gives the process up."""
        lease = self.held.get(pid)
        token = FENCE.set(lease)
        try:
            yield
        except LeaseLost as exc:
            self.give_up(pid, str(exc), lease)
            raise
        finally:
            FENCE.reset(token)

    def admitted(self, proc: AgentProcess) -> None:
        """A process enters the table: a new one is leased to this broker."""
        if self.active and proc.pid not in self.held and proc.alive:
            assert self.identity is not None
            self.held[proc.pid] = self.kernel.store.take_lease(proc.pid, self.identity,
                                                               self.ttl)

    def load(self, pid: int) -> AgentProcess:
        """A process looked up that is not in the table: a live one is taken (its lease, then
        resumed here), or `Conflict` when another broker runs it; an ended one is read."""
        row = self.kernel.store.get_process(pid)
        if row["state"] not in _LIVE:  # (ended, or no state: refused there as unreadable)
            return recovery.reload(self.kernel, pid)
        proc = self.take(pid)
        if proc is None:
            lease = self.kernel.store.lease_of(pid)
            holder = lease.holder if lease else "another broker"
            raise HeldElsewhere(f"process {pid} is run by broker {holder!r}", holder)
        return proc

    def take(self, pid: int) -> AgentProcess | None:
        """Take process `pid`'s lease and resume it here; None if another broker holds it."""
        assert self.identity is not None
        try:
            lease = self.kernel.store.take_lease(pid, self.identity, self.ttl)
        except LeaseLost:
            return None  # (taken in a task that lost its own lease)
        except Conflict:
            return None
        self.held[pid] = lease
        token = FENCE.set(lease)
        try:
            return recovery.resume(self.kernel, pid)
        except LeaseLost as exc:
            self.give_up(pid, str(exc))
            return None
        except Tampered as exc:  # ended (its image refused), or held: its lease let go, not
            del self.held[pid]  # renewed for good
            if isinstance(exc, Held):
                self.unrun.add(pid)
            with contextlib.suppress(Conflict, StoreUnavailable):
                self.kernel.store.release_lease(lease)
            raise
        finally:
            FENCE.reset(token)

    def give_up(self, pid: int, why: str, lease: Lease | None = None) -> None:
        """Stop running `pid` here at once, writing nothing more for it: its lease was lost
        (`lease`: the one a task found lost; a task of an older lease is ending anyway, and
        the process it ran may be this broker's again under a newer one)."""
        current = self.held.get(pid)
        if lease is not None and (current is None or current.token != lease.token):
            return
        self.held.pop(pid, None)
        proc = self.kernel.forget(pid)
        if current is None and proc is None:
            return  # given up already (its task and the renewal both found out)
        self.given_up.add((pid, why))
        if proc is not None and proc.scope is not None:
            proc.scope.cancel()
        if current is not None:
            # Let go in the store too, if it is still this one's: whoever takes the process
            # next (this broker again, say) does so with a new token, which a task of this
            # lease that has not noticed yet cannot write with.
            fence = FENCE.set(None)
            try:
                with contextlib.suppress(Conflict, StoreUnavailable):
                    self.kernel.store.release_lease(current)
            finally:
                FENCE.reset(fence)
        log.warning("broker %s gave up process %s: %s", self.identity, pid, why)

    async def run(self) -> None:
        """Background task: renew, and take work, while the kernel is open."""
        while True:
            await trio.sleep(CLAIM_POLL)
            try:
                self.tick()
            except StoreUnavailable as exc:
                for pid in list(self.held):
                    self.give_up(pid, f"the store is unreachable: {exc}")
                await trio.sleep(self.ttl)  # then retry: the leases have expired by now

    def tick(self) -> None:
        now = self.kernel.clock.now()
        if now - self._renewed >= self.ttl / 3:
            self._renewed = now
            self.renew()
        for pid in self.kernel.store.claimable_pids(now - NEW_GRACE, CLAIM_BATCH):
            if pid not in self.held and pid not in self.unrun:
                with contextlib.suppress(Tampered):  # its image refused: ended, recorded
                    self.take(pid)

    def renew(self) -> None:
        """Every lease still needed, renewed in one write (the lost ones given up)."""
        needed = []
        for pid, lease in list(self.held.items()):
            proc = self.kernel.loaded(pid)
            if proc is None or not proc.alive:
                self.held.pop(pid, None)  # ended here: nobody needs it
                self.ended.add(pid)
                continue
            needed.append(lease)
        self._settle_unrun()
        renewed, lost = self.kernel.store.renew_leases(needed, self.ttl)
        for lease in renewed:
            self.held[lease.pid] = lease
        for lease in lost:
            self.give_up(lease.pid, f"process {lease.pid}: lease {lease.token} was taken by"
                                    " another broker, or expired", lease)

    def _settle_unrun(self) -> None:
        """A process found held is skipped only while it still is: once its row ended (the
        host's kill, here or by another broker), another broker took its lease, or the chain
        no longer holds it (a signed end since: the next look takes it, and it ends as it
        loads), it is forgotten here."""
        if not self.unrun:
            return
        links = self.kernel.store.chain_links()
        links.walk()  # (only the records appended since the last walk)
        for pid in list(self.unrun):
            try:
                live = self.kernel.store.get_process(pid)["state"] in _LIVE
            except NotFound:
                live = False
            except Tampered:  # (a row edited past reading: still not run, still skipped; a
                continue  # renewal that raised here left every lease unrenewed, red team 22)
            # (a lease let go, expired, is nobody's: another broker that found it held too)
            lease = self.kernel.store.lease_of(pid)
            taken = (lease is not None and lease.holder != self.identity
                     and lease.expires > self.kernel.clock.now())
            if not live or taken or links.held(pid) is None:
                self.unrun.discard(pid)

    def release_all(self) -> None:
        """At close: every process held goes back to the store for another broker now."""
        for lease in list(self.held.values()):
            # Lost already, or the store is gone: the lease expires on its own.
            with contextlib.suppress(Conflict, StoreUnavailable):
                self.kernel.store.release_lease(lease)
        self.held.clear()
