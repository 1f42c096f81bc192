"""The shared chain's own checks on the server (`libos_fence`, `libos_head_is`: migrations 5
and 17) and the locks the brokers' SQL takes, attacked by a writer without the key who can
run DDL as the brokers' role: objects of their own (an operator, a function of the catalog's
name, an overload of a check) in `public`, put ahead of pg_catalog in the search path of the
sessions opened after (`ALTER DATABASE ... SET search_path`), or merely beside the check
with the types the driver sends. Each must still refuse what it refuses: a lost lease's
write, a lease held, an append linked to a head that is not the chain's, a second writer, a
write beside another's; and an upgrade must still migrate the store where it is."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from broker import Conflict
from broker.store import AuditRecord
from broker.store.leases import LeaseLost
from broker.store.migrations import migrations
from broker.store.opening import open_store
from broker.store.pg_connection import StoreUnavailable
from broker.store.postgres import WRITE_LOCK, DuplicateBroker, PostgresStore
from tests.broker.store.conftest import raw
from tests.broker.store.test_leases import Clock, _write
from tests.broker.store.test_pg_reconnect import cut

_NEVER = ("CREATE FUNCTION public.never({0}, {0}) RETURNS boolean LANGUAGE sql IMMUTABLE"
          " AS 'SELECT false'")

# The writer's `<>` over bigints: never true.
_NOT_EQUAL_NEVER = (_NEVER.format("bigint"), "CREATE OPERATOR public.<> (LEFTARG = bigint,"
                    " RIGHTARG = bigint, FUNCTION = public.never)")


def _writers_objects(dsn: str, *ddl: str, path: str | None = "public, pg_catalog") -> None:
    """The writer's DDL, run as the brokers' role; then `path` the search path of every
    session opened after (by default `public` ahead of pg_catalog)."""
    with raw(dsn) as db:
        for statement in ddl:
            db.execute(statement, ())
        if path is not None:
            name = dsn.rsplit("/", 1)[1]
            db.execute(f"ALTER DATABASE {name} SET search_path = {path}", ())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def made(pg_database: str, clock: Clock) -> str:
    open_store(pg_database, clock=clock).close()  # made, migrated (before the writer acts)
    return pg_database


def _lost_lease_refused(dsn: str, clock: Clock) -> None:
    """Broker a's lease of process 7 expires and b takes it: a's write is refused, b's (the
    neighbour) made."""
    a, b = (open_store(dsn, clock=clock, writer=False) for _ in range(2))
    try:
        lease_a = a.take_lease(7, "broker-a", ttl=10)
        clock.now += 30
        lease_b = b.take_lease(7, "broker-b", ttl=10)
        with pytest.raises(LeaseLost):
            _write(a, lease_a, "a")
        _write(b, lease_b, "b")
        assert b.meta("owner") == "b"
    finally:
        a.close()
        b.close()


def test_a_writers_not_equal_first_in_the_path_lets_no_lost_lease_write(
        made: str, clock: Clock) -> None:
    """HIGH: the writer's `<>` over bigints (never true), ahead of pg_catalog's: the fence
    read a taken lease's token as its holder's and let the lost holder write, silently."""
    _writers_objects(made, *_NOT_EQUAL_NEVER)
    _lost_lease_refused(made, clock)


def test_a_writers_overload_of_the_fence_lets_no_lost_lease_write(
        made: str, clock: Clock) -> None:
    """HIGH: a `libos_fence` of the writer's beside the chain's, in the same schema, its
    parameters of the types of the call's values as a batch writes them (literals: an
    integer, an integer, a numeric): the call chose it over the chain's, which takes them
    only by casts, and a lost lease wrote, silently. No search path is changed."""
    _writers_objects(made, "CREATE FUNCTION public.libos_fence(integer, integer, numeric)"
                     " RETURNS void LANGUAGE sql AS ''", path=None)
    _lost_lease_refused(made, clock)


# The writer's `=` between a bigint and an integer (a batch's literal): always true.
_EQUALS_ALWAYS = ("CREATE FUNCTION public.always(bigint, integer) RETURNS boolean"
                  " LANGUAGE sql IMMUTABLE AS 'SELECT true'",
                  "CREATE OPERATOR public.= (LEFTARG = bigint, RIGHTARG = integer,"
                  " FUNCTION = public.always)")


def _no_lease_held_is_taken(a: object, b: object, clock: Clock) -> None:
    """b holds process 7's lease (1's, a's, expired): a's take of 7 is refused; b's of 1,
    the neighbour, made."""
    a.take_lease(1, "broker-a", ttl=10)  # type: ignore[attr-defined]
    clock.now += 30
    held = b.take_lease(7, "broker-b", ttl=10)  # type: ignore[attr-defined]
    with pytest.raises(Conflict, match="leased to broker 'broker-b'"):
        a.take_lease(7, "broker-a", ttl=10)  # type: ignore[attr-defined]
    assert a.lease_of(7) == held  # type: ignore[attr-defined]
    assert b.take_lease(1, "broker-b", ttl=10).holder == "broker-b"  # type: ignore[attr-defined]


def test_a_writers_equals_first_in_the_path_takes_no_lease_held(made: str, clock: Clock) -> None:
    """HIGH: the writer's `=` ahead of pg_catalog's, in the brokers' own SQL: the look-up of
    process 7's lease read the first row of any process (1's, expired), and a took 7 from b,
    its lease unexpired, silently. The brokers' sessions read the catalog's names first,
    whatever path the writer set."""
    _writers_objects(made, *_EQUALS_ALWAYS)
    a, b = (open_store(made, clock=clock, writer=False) for _ in range(2))
    try:
        _no_lease_held_is_taken(a, b, clock)
    finally:
        a.close()
        b.close()


def test_a_session_made_again_reads_the_catalogs_names_first(made: str, clock: Clock) -> None:
    """As above, for a broker opened before the writer acted whose session is then ended:
    the session it makes again is pinned as its first was."""
    a = PostgresStore(made, broker="a", clock=clock)
    try:
        _writers_objects(made, *_EQUALS_ALWAYS)
        cut(made, a)
        with contextlib.suppress(StoreUnavailable):  # (the cut found: connects again after)
            a.last_seq()
        b = open_store(made, clock=clock, writer=False)
        try:
            _no_lease_held_is_taken(a, b, clock)
        finally:
            b.close()
    finally:
        a.close()


def test_a_writers_fence_in_a_schema_ahead_in_the_path_lets_no_lost_lease_write(
        made: str, clock: Clock) -> None:
    """HIGH: a `libos_fence` of the writer's, of the chain's very parameters, in a schema of
    their own put ahead of the store's in the search path: the call named no schema, chose
    theirs, and a lost lease wrote, silently."""
    _writers_objects(made, "CREATE SCHEMA ahead",
                     "CREATE FUNCTION ahead.libos_fence(bigint, bigint, double precision)"
                     " RETURNS void LANGUAGE sql AS ''", path="ahead, public")
    _lost_lease_refused(made, clock)


@pytest.mark.parametrize(("ddl", "path"), [(_NOT_EQUAL_NEVER, "public, pg_catalog"),
                                           (("CREATE SCHEMA ahead",), "ahead, public")])
def test_a_store_made_before_version_17_gets_its_checks_pinned(
        made: str, clock: Clock, ddl: tuple[str, ...], path: str) -> None:
    """A store at version 16 (its checks as version 5 made them, reading the caller's search
    path) is brought to 17 as it opens, whatever the writer put first in the path: their
    `<>` ahead of pg_catalog's lets no lost lease write there either, and an empty schema of
    theirs ahead of the store's is where nothing is made (HIGH: the upgrade made a whole new
    store there, empty, which the brokers then read and wrote)."""
    with raw(made) as db:
        db.execute("DROP FUNCTION libos_fence(bigint, bigint, double precision)", ())
        db.execute("DROP FUNCTION libos_head_is(bigint, text)", ())
        db.execute(migrations("postgres")[4].sql, ())
        db.execute("DELETE FROM schema_migrations WHERE version >= 17", ())
    _writers_objects(made, *ddl, path=path)
    _lost_lease_refused(made, clock)
    with raw(made) as db:
        assert db.execute("SELECT max(version) FROM public.schema_migrations",
                          ()).fetchone()[0] == 17
        assert db.execute("SELECT table_schema FROM information_schema.tables WHERE"
                          " table_schema NOT IN ('public', 'pg_catalog', 'information_schema')",
                          ()).fetchall() == []


def _appends_on_a_stale_head_link_to_the_chain(dsn: str) -> None:
    """Broker b appends after a, on the head it last knew (a's append unknown to it): its
    record is linked to the chain's head, and the chain verifies."""
    a, b = (PostgresStore(dsn, broker=name) for name in ("a", "b"))
    try:
        b.append_audit(AuditRecord(phase="admin", syscall="clock.now"))
        a.append_audit(AuditRecord(phase="admin", syscall="clock.now"))
        seq = b.append_audit(AuditRecord(phase="admin", syscall="clock.now"))
        records = {r.seq: r for r in b.audit_records()}
        assert records[seq].prev_hash == records[seq - 1].hash
        for store in (a, b):
            store.sign_anchor()
        assert b.audit_problems()[1] == []
    finally:
        a.close()
        b.close()


# The writer's check of the head: the chain's newest seq, with a hash of the writer's, is
# "the head it moved to", and a guess of that head passes.
_FORGED_HEAD = """CREATE FUNCTION public.libos_head_is({0}, p_hash text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE newest bigint;
BEGIN
    SELECT coalesce(max(seq), 0) INTO newest FROM audit;
    IF p_hash <> repeat('f', 64) THEN
        RAISE EXCEPTION 'moved' USING ERRCODE = 'LBH01', DETAIL = newest || ' ' || repeat('f', 64);
    END IF;
END $$"""


def test_a_writers_overload_of_the_head_check_tells_no_head_that_is_not(made: str) -> None:
    """HIGH: a `libos_head_is` of the writer's beside the chain's, its seq an integer (a
    batch's literal) and its hash text: the call chose it, it told the broker the head
    moved to the newest seq with a hash of the writer's, then passed that guess, and the
    broker's record linked to a head that is not (the chain broken under the broker's own
    signature), silently."""
    _writers_objects(made, _FORGED_HEAD.format("integer"), path=None)
    _appends_on_a_stale_head_link_to_the_chain(made)


def test_a_writers_operators_first_in_the_path_misread_no_head(made: str) -> None:
    """LOW: the writer's `<>` over text and bigints ahead of pg_catalog's: the chain's check
    passed b's stale guess, and its append failed on the key (`StoreRefused`: loud, a
    denial a writer has anyway). It must find the head moved under b, and b append after."""
    _writers_objects(made, _NEVER.format("bigint"), _NEVER.format("text"),
                     "CREATE OPERATOR public.<> (LEFTARG = bigint, RIGHTARG = bigint,"
                     " FUNCTION = public.never)",
                     "CREATE OPERATOR public.<> (LEFTARG = text, RIGHTARG = text,"
                     " FUNCTION = public.never)")
    _appends_on_a_stale_head_link_to_the_chain(made)


def test_a_writers_try_lock_first_in_the_path_opens_no_second_writer(
        made: str, tmp_path: Path) -> None:
    """HIGH: the writer's `pg_try_advisory_lock(bigint)` (always true) ahead of
    pg_catalog's: a second single writer opened beside the first, each keeping the chain's
    head as its own."""
    _writers_objects(made, "CREATE FUNCTION public.pg_try_advisory_lock(bigint)"
                     " RETURNS boolean LANGUAGE sql AS 'SELECT true'")
    first = PostgresStore(made, anchor=tmp_path / "first.anchor")
    try:
        with pytest.raises(Conflict, match="another broker"):  # (its anchor elsewhere: as
            PostgresStore(made, anchor=tmp_path / "second.anchor").close()  # on another host)
        first.append_audit(AuditRecord(phase="admin", syscall="clock.now"))  # the neighbour
    finally:
        first.close()


def test_a_writers_hash_first_in_the_path_opens_no_second_broker_of_one_identity(
        made: str, tmp_path: Path) -> None:
    """HIGH: the writer's `hashtext(text)` (a new number each call) ahead of pg_catalog's:
    the session lock of a broker's identity was keyed anew by each, and a second broker
    "a" opened beside the first (on another host: its anchor elsewhere), both appending as
    one identity."""
    _writers_objects(made, "CREATE FUNCTION public.hashtext(text) RETURNS integer"
                     " LANGUAGE sql VOLATILE AS 'SELECT (random() * 1e9)::integer'")
    first = PostgresStore(made, broker="a", anchor=tmp_path / "first.anchor")
    try:
        with pytest.raises(DuplicateBroker, match="identity 'a'"):
            PostgresStore(made, broker="a", anchor=tmp_path / "second.anchor").close()
        other = PostgresStore(made, broker="b", anchor=tmp_path / "b.anchor")  # the neighbour
        other.close()
    finally:
        first.close()


def test_a_writers_write_lock_first_in_the_path_lets_no_write_beside_another(
        made: str, tmp_path: Path) -> None:
    """HIGH: the writer's `pg_advisory_xact_lock(bigint)` (a no-op) ahead of pg_catalog's:
    a broker's write transaction ran beside another holding the write lock (the broker's
    read-modify-writes and a CLI's answer interleaved). It must wait for the lock."""
    _writers_objects(made, "CREATE FUNCTION public.pg_advisory_xact_lock(bigint)"
                     " RETURNS void LANGUAGE sql AS ''")
    store = open_store(made, writer=False)
    done = threading.Event()
    try:
        with raw(made) as holder:
            holder.execute(f"SELECT pg_catalog.pg_advisory_lock({WRITE_LOCK})", ())
            writing = threading.Thread(target=lambda: (_write_meta(store), done.set()))
            writing.start()
            waited = _waits_for_the_lock(made)
            holder.execute(f"SELECT pg_catalog.pg_advisory_unlock({WRITE_LOCK})", ())
            writing.join(30)
        assert waited and done.is_set()
        assert store.meta("owner") == "here"  # the neighbour: written once the lock was free
    finally:
        store.close()


def _write_meta(store: object) -> None:
    with store.transaction() as db:  # type: ignore[attr-defined]
        db.execute("INSERT INTO meta(key, value) VALUES ('owner', 'here')")


def _waits_for_the_lock(dsn: str) -> bool:
    """A session waits for an advisory lock (polled, up to 10 s)."""
    deadline = time.monotonic() + 10
    with raw(dsn) as db:
        while time.monotonic() < deadline:
            if db.execute("SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory'"
                          " AND NOT granted", ()).fetchone()[0]:
                return True
            time.sleep(0.05)
    return False
