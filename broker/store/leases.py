"""Leases: a live process is run by one broker at a time, for a while, with a fencing token.

A broker takes a process's lease for `ttl` seconds (`take_lease`) and renews it while it runs
the process (`renew_lease`; all of a broker's at once: `renew_leases`); a lease nobody renewed
expires, and then another broker may take it. Every take gives a token one greater than the
last, never reused. A write for the process is made in `fenced(lease)`: one write transaction
(the store's write lock held from its start) that first checks that the lease still has this
token and has not expired, and writes nothing (`LeaseLost`) otherwise. So a broker that lost
its lease (paused past its expiry, cut off from the database) and another took can no longer
write for the process, whatever it believes; the check and the writes are one transaction, so
no take falls between them. (On PostgreSQL the check is a server-side function, `libos_fence`,
sent with the transaction's writes in one batch: see `broker.store.postgres`.)

Expiry is judged by the store's clock (the caller's host); a skewed clock can only make a take
early or late, never let two brokers write: the token decides that.

A mixin of both backends; meant for many brokers over one database (issue 18), where each
broker opens the store as a reader of the others' processes (no broker-wide writer lock).

The kernel (`broker.kernel.leasing`) runs each leased process's task with its lease in
`FENCE`: then every write transaction that task makes (a record of its syscalls, a
checkpoint, a state change) checks the lease first, in the same transaction, with no call
site of its own to forget.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from broker.errors import Conflict, InvalidArgument
from broker.store.connection import Connected, Db

_RENEW_CHUNK = 400  # leases renewed per statement (two parameters each)


class LeaseLost(Conflict):
    """The lease was taken by another broker, or expired: this broker may not write for the
    process any more."""


@dataclass(frozen=True, slots=True)
class Lease:
    pid: int
    holder: str
    token: int
    expires: float


# The lease of the process the current task writes for (None: not a leased process's task).
FENCE: ContextVar[Lease | None] = ContextVar("libos_fence", default=None)


class LeaseTable(Connected):
    def take_lease(self, pid: int, holder: str, ttl: float) -> Lease:
        """The lease of process `pid` for `holder`, for `ttl` seconds: a new one (a new token)
        if nobody holds it or its lease expired, the same token renewed if `holder` holds it.
        `Conflict` if another broker holds it unexpired."""
        if not isinstance(holder, str) or not holder or len(holder) > 128 or ttl <= 0:
            raise InvalidArgument("a lease needs a broker identity and a positive ttl")
        with self.transaction() as db:
            now = self._now()
            row = db.execute("SELECT holder, token, expires FROM leases WHERE pid=?",
                             (pid,)).fetchone()
            if row is not None and row["expires"] > now and row["holder"] != holder:
                raise Conflict(f"process {pid} is leased to broker {row['holder']!r} for "
                               f"{row['expires'] - now:.1f} s more")
            token = (row["token"] if row is not None and row["expires"] > now
                     else (row["token"] + 1 if row is not None else 1))
            lease = Lease(pid, holder, token, now + ttl)
            db.execute("INSERT INTO leases(pid, holder, token, expires) VALUES (?,?,?,?) ON"
                       " CONFLICT (pid) DO UPDATE SET holder=excluded.holder,"
                       " token=excluded.token, expires=excluded.expires",
                       (pid, holder, token, lease.expires))
        return lease

    def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        """The lease for `ttl` seconds more; `LeaseLost` if it expired or was taken."""
        with self.fenced(lease) as db:
            renewed = Lease(lease.pid, lease.holder, lease.token, self._now() + ttl)
            db.execute("UPDATE leases SET expires=? WHERE pid=? AND token=?",
                       (renewed.expires, lease.pid, lease.token))
        return renewed

    def renew_leases(self, leases: Iterable[Lease], ttl: float
                     ) -> tuple[list[Lease], list[Lease]]:
        """A broker's leases for `ttl` seconds more, in one write transaction (one UPDATE per
        `_RENEW_CHUNK` of them): each renewed only if it still has its token and has not
        expired, as `renew_lease` checks. Returns (renewed, lost)."""
        given = list(leases)
        renewed: list[Lease] = []
        if not given:
            return renewed, []
        with self.transaction() as db:
            now = self._now()
            kept: set[int] = set()
            for at in range(0, len(given), _RENEW_CHUNK):
                chunk = given[at:at + _RENEW_CHUNK]
                pairs = ",".join("(?,?)" for _ in chunk)
                kept.update(r[0] for r in db.execute(
                    f"UPDATE leases SET expires=? WHERE expires>? AND (pid, token) IN"
                    f" (VALUES {pairs}) RETURNING pid",
                    (now + ttl, now, *(v for lease in chunk for v in (lease.pid, lease.token)))
                ).fetchall())
        lost = [lease for lease in given if lease.pid not in kept]
        renewed = [Lease(lease.pid, lease.holder, lease.token, now + ttl)
                   for lease in given if lease.pid in kept]
        return renewed, lost

    def release_lease(self, lease: Lease) -> None:
        """Give the process up now (another broker may take it at once); a lease already lost
        is left to its new holder."""
        with self.transaction() as db:
            db.execute("UPDATE leases SET expires=0 WHERE pid=? AND token=?",
                       (lease.pid, lease.token))

    def claimable_pids(self, born_before: float, limit: int) -> list[int]:
        """Live processes no broker holds: their lease expired or was given up, or they have
        none and were made before `born_before` (a younger one is its spawner's to lease)."""
        return [r["pid"] for r in self._query(
            "SELECT p.pid FROM processes p LEFT JOIN leases l ON l.pid = p.pid"
            " WHERE p.state NOT IN ('exited', 'killed') AND (l.expires <= ?"
            " OR (l.pid IS NULL AND p.created < ?)) ORDER BY random() LIMIT ?",
            (self._now(), born_before, limit))]

    def lease_of(self, pid: int) -> Lease | None:
        rows = self._query("SELECT pid, holder, token, expires FROM leases WHERE pid=?", (pid,))
        return Lease(*tuple(rows[0])) if rows else None

    def _fenced(self) -> bool:
        return FENCE.get() is not None

    def _fence(self, db: Db) -> None:
        lease = FENCE.get()
        if lease is not None:
            self._check_lease(db, lease)

    def _check_lease(self, db: Db, lease: Lease) -> None:
        row = db.execute("SELECT token, expires FROM leases WHERE pid=?",
                         (lease.pid,)).fetchone()
        if row is None or row["token"] != lease.token:
            raise LeaseLost(f"process {lease.pid}: lease {lease.token} was taken by another"
                            " broker")
        if row["expires"] <= self._now():
            raise LeaseLost(f"process {lease.pid}: lease {lease.token} expired")

    @contextmanager
    def fenced(self, lease: Lease) -> Iterator[Db]:
        """A write transaction for the lease's process: the lease is checked first (same
        token, not expired) under the write lock, then the caller's writes commit, or
        `LeaseLost` and nothing is written."""
        with self.transaction() as db:
            self._check_lease(db, lease)
            yield db
