"""Red team 40 on lane pghard (a store's session pinned against what a writer sets for the
database's sessions): the search path was pinned, but not the other settings a writer
without the key (who can run DDL as the brokers' role) sets the same way, `ALTER DATABASE
... SET`, that change what the brokers read back. A negative `extra_float_digits` had every
float read rounded (a lease's expiry read as past: a lease held taken, silently; the
chain's timestamps read as edited), and `client_encoding = SQL_ASCII` had text read back as
bytes (a TypeError traceback at the open). Each session now sets both itself."""

from __future__ import annotations

import contextlib

import pytest

from broker import Conflict
from broker.store import AuditRecord
from broker.store.opening import open_store
from broker.store.pg_connection import StoreUnavailable
from broker.store.postgres import PostgresStore
from tests.broker.store.conftest import raw
from tests.broker.store.test_leases import Clock
from tests.broker.store.test_pg_reconnect import cut

# A time whose 4 significant digits (`extra_float_digits = -11`) round it down by 4.6 days.
_NOW = 1_700_400_000.0
_ROUNDING = "extra_float_digits = -11"


def _database_set(dsn: str, setting: str) -> None:
    """The writer's default for every session opened after, as the brokers' role."""
    with raw(dsn) as db:
        db.execute(f"ALTER DATABASE {dsn.rsplit('/', 1)[1]} SET {setting}", ())


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.now = _NOW
    return clock


def _no_held_lease_taken(a: object, b: object) -> None:
    """a holds process 7's lease a minute more: b's take is refused; b's of 8 (the
    neighbour) made, and a's lease still a's."""
    held = a.take_lease(7, "broker-a", ttl=60)  # type: ignore[attr-defined]
    with pytest.raises(Conflict, match="leased to broker 'broker-a'"):
        b.take_lease(7, "broker-b", ttl=60)  # type: ignore[attr-defined]
    assert b.lease_of(7) == held  # type: ignore[attr-defined]
    assert b.take_lease(8, "broker-b", ttl=60).holder == "broker-b"  # type: ignore[attr-defined]


def test_a_writers_float_digits_take_no_lease_held(pg_database: str, clock: Clock) -> None:
    """MEDIUM: the writer's `extra_float_digits = -11`: a's expiry (a minute ahead) read as
    1,700,000,000, days past, and b took the lease a held, silently (a's writes then lost
    to the fence mid-step)."""
    open_store(pg_database, clock=clock).close()
    _database_set(pg_database, _ROUNDING)
    a, b = (open_store(pg_database, clock=clock, writer=False) for _ in range(2))
    try:
        _no_held_lease_taken(a, b)
    finally:
        a.close()
        b.close()


def test_a_session_made_again_reads_floats_exactly(pg_database: str, clock: Clock) -> None:
    """As above, for a broker opened before the writer acted whose session is then ended."""
    a = PostgresStore(pg_database, broker="a", clock=clock)
    try:
        _database_set(pg_database, _ROUNDING)
        cut(pg_database, a)
        with contextlib.suppress(StoreUnavailable):  # (the cut found: connects again after)
            a.last_seq()
        b = open_store(pg_database, clock=clock, writer=False)
        try:
            _no_held_lease_taken(a, b)
        finally:
            b.close()
    finally:
        a.close()


@pytest.mark.parametrize("setting", [_ROUNDING, "client_encoding = 'SQL_ASCII'"])
def test_a_writers_session_defaults_leave_the_chain_read_as_written(
        pg_database: str, setting: str) -> None:
    """The writer's rounding had every record's timestamp read back rounded, and the chain
    called edited (`audit --verify`'s problems; loud, a false alarm); their SQL_ASCII failed
    the open with a TypeError (text read as bytes), a traceback. A broker opens, appends,
    and its chain verifies."""
    PostgresStore(pg_database, broker="a").close()
    _database_set(pg_database, setting)
    store = PostgresStore(pg_database, broker="a")
    try:
        for _ in range(3):
            store.append_audit(AuditRecord(phase="admin", syscall="clock.now",
                                           detail={"text": "é'\\", "n": 1.1}))
        store.sign_anchor()
        assert store.audit_problems()[1] == []
    finally:
        store.close()


# The writer's `>` between a double precision and a numeric (a float as a batch's literal
# was typed): always true. Made in the store's own schema, which every pinned path holds.
_GREATER_ALWAYS = ("CREATE FUNCTION public.always(double precision, numeric) RETURNS boolean"
                   " LANGUAGE sql IMMUTABLE AS 'SELECT true'",
                   "CREATE OPERATOR public.> (LEFTARG = double precision, RIGHTARG = numeric,"
                   " FUNCTION = public.always)")


def test_a_writers_operator_for_a_float_literal_renews_no_lease_expired(
        pg_database: str, clock: Clock) -> None:
    """LOW: a float a write transaction sends was a bare literal (`ClientCursor.mogrify`),
    typed numeric, and the catalog has no `>` of a double precision and a numeric: the
    writer's, beside the store's tables, was the exact match the pinned path did not stop,
    and an expired lease was renewed (an answer past its deadline would be taken alike).
    Each float is now sent as a `pg_catalog.float8`."""
    store = open_store(pg_database, clock=clock, writer=False)
    try:
        with raw(pg_database) as db:
            for statement in _GREATER_ALWAYS:
                db.execute(statement, ())
        kept, expired = (store.take_lease(pid, "broker-a", ttl=10) for pid in (7, 8))
        clock.now += 5
        store.release_lease(expired)
        renewed, lost = store.renew_leases([kept, expired], ttl=10)
        assert [lease.pid for lease in renewed] == [7] and lost == [expired]
    finally:
        store.close()
