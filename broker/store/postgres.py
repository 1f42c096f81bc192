"""The shared store: a PostgreSQL database, through psycopg 3 (the optional extra `postgres`).

The same tables and the same code as the SQLite store (`broker.store.sqlite`): the mixins of
`broker.store.connection` over a connection shaped like sqlite3's (`pg_connection`), and the
PostgreSQL line of schema migrations. What SQLite gets from being one file on one host, this
backend gets from the server, as follows:

- One broker writes a store at a time. SQLite: an exclusive flock on `<db>.lock`. Here: a
  session-level advisory lock (`pg_try_advisory_lock(WRITER_LOCK)`) held by the writer's
  connection for as long as it is open; the server drops it if the broker dies or its
  connection breaks. A second writer gets `Conflict`, as with SQLite.
- A write transaction holds the write lock from its start. SQLite: BEGIN IMMEDIATE. Here:
  `BEGIN; SELECT pg_advisory_xact_lock(WRITE_LOCK)`, held to COMMIT, so the broker and a CLI
  answering an approval never interleave a read-modify-write (READ COMMITTED then sees
  everything committed before the lock was taken).
- A write transaction is sent as one batch (`pg_connection`: pipeline mode), from BEGIN to
  COMMIT, and answered in one round trip unless something in it reads a result first. Its
  checks are server-side functions (migration 5) that refuse the transaction when they fail:
  the fence of a leased process's writes (`libos_fence`: `LeaseLost`) and, for many brokers,
  the chain's head an append links to (`libos_head_is`: `HeadMoved`, see
  `broker.store.chain`). So the write lock is held for the server's own time, not for round
  trips to a broker; the COMMIT's answer is awaited before the transaction returns, as
  before (durable first, then acted on).
- The chain's head is kept in memory by the one writer, as with SQLite: one INSERT per
  record, no read-back. The audit table's key is the seq the writer gives, so a writer that
  were ever wrong about the head would fail on the key instead of forking the chain.
- The chain's anchor (`broker.store.anchor`) is a file on the writer's host, outside the
  database (a forger with the database cannot reach it): under the user's state directory,
  named by the database's address (`broker.store.location`), or where `anchor` says.

Many brokers (`broker="<identity>"`, issue 18) share one database instead: each holds the
writer lock shared (so no single writer opens it beside them) and a session lock on its
identity (a second broker with the same identity gets `DuplicateBroker`, on any host; on one
host its anchor file's flock says so first). They append to one chain, its head read in each
append's write transaction (`broker.store.chain`); each keeps an anchor of its own on its
host (`brokers/<identity>.anchor` beside the database's address), and `broker.store.verify`
checks every anchor it finds, with the newest signed one covering the chain's end.

Records hash exactly as in SQLite: timestamps are float8 (a Python float, exactly), the
detail is the same JSON text.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.errors import Conflict, InvalidArgument
from broker.store import marked
from broker.store.anchor import Anchor, Signed, write_signed
from broker.store.anchor import read as read_anchor_file
from broker.store.audit import GENESIS
from broker.store.connection import Db
from broker.store.ctrl_c import protect_from_ctrl_c
from broker.store.keys import AuditKey, writer_key
from broker.store.location import beside, database_name
from broker.store.migrations import migrate_postgres
from broker.store.pg_checks import PINNED_SETTINGS, ServerChecks
from broker.store.pg_connection import (
    PgConnection,
    StoreFailed,
    StoreUnavailable,
    connect,
    driver,
)
from broker.store.tables import StoreTables
from broker.store.writer_lock import (
    release_if_still_taken,
    release_writer_lock,
    take_number,
    take_writer_lock,
)

# Advisory lock keys (any fixed 64-bit numbers, one per lock; the migration lock is
# `broker.store.migrations.MIGRATION_LOCK`).
WRITER_LOCK = 0x6C69626F73_0002  # session level: the one writing broker
WRITE_LOCK = 0x6C69626F73_0003  # transaction level: a write transaction (BEGIN IMMEDIATE)
IDENTITY_LOCK = 0x6C69626F  # session level, with the identity's hash: one broker per identity
NOTICES = "libos"  # the channel a change other brokers should see is told on
OPEN_PATIENCE_S = 2.0  # an open waits this long for a session lock a crashed broker's backend holds
RELOCK_PATIENCE_S = 5.0  # a reconnect waits this long for its lost session's locks to go
IDLE_IN_WRITE_MS = 3000  # a shared broker's session idle inside a transaction this long ends
# synchronous_commit per durability: "normal" keeps the server's own setting (a commit the
# server acknowledged survives a crash of the broker either way), "off" is for benchmarks.
DURABILITY = {"full": "on", "normal": None, "off": "off"}


class DuplicateBroker(Conflict):
    """Another broker with the same identity has the store open."""


class WrittenMeanwhile(Conflict):
    """A single writer's connection broke, and when it was made again the audit chain's head
    was not the one this writer last committed: another wrote the store in the gap."""


class _Lost:
    """A write whose answer a broken connection lost (`PostgresStore._went_through`): the
    head it would have made, how many deferred writes it carried (the first of those waiting,
    once they wait again), and whether it held writes of its own (`own`: records, or a
    transaction's other statements) or only those."""

    __slots__ = ("found", "head", "own", "requeued", "waiting")

    def __init__(self, head: tuple[int, str], waiting: int, own: bool) -> None:
        self.head, self.waiting, self.own = head, waiting, own
        self.found = self.requeued = False


class PostgresStore(ServerChecks, StoreTables):
    """The store the kernel uses (see `broker.store.interface.Store`) over PostgreSQL."""

    _written_meanwhile: str | None = None  # why this writer stopped for good (see above)
    _shareable = True  # brokers may share it (`AuditReads.shared_links`)
    _lost: _Lost | None = None  # a write whose answer was lost, not known committed or not

    def __init__(self, dsn: str, *, clock: Any = time.time, writer: bool = True,
                 durability: str = "normal", anchor: str | Path | None = None,
                 audit_key: AuditKey | str | Path | None = None,
                 broker: str | None = None) -> None:
        protect_from_ctrl_c(type(self))  # opened alone too (`broker.store.ctrl_c`)
        if durability not in DURABILITY:
            raise ValueError(f"durability is one of {sorted(DURABILITY)}")
        if broker is not None and (not writer or not valid_identity(broker)):
            raise InvalidArgument("a broker's identity is 1 to 64 letters, digits, '.', '_' or"
                                  f" '-' (and a broker writes): {str(broker)[:80]!r}")
        self.path = shown_address(dsn)
        self.broker = broker
        self._shared = broker is not None
        self._now = clock
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._brokers_dir = beside(dsn, "brokers")
        # Where the store is, as a control request names it (with its first record: `identity`).
        self._place = f"postgresql {database_name(dsn)}"
        own = self._brokers_dir / f"{broker}.anchor" if broker else beside(dsn, "anchor")
        self._anchor_path = str(anchor if anchor is not None else own)
        self._key = writer_key(audit_key) if writer else None
        # Shared: the chain's marker, remembered beside this broker's key (`store.marked`).
        self.marker_memory = (marked.place(self._key.path, self._brokers_dir.parent.name)
                              if self._shared and self._key is not None else None)
        self._durability = DURABILITY[durability]
        self._dsn = dsn
        self._opener = os.getpid()
        self._listener: Any = None
        self._listen_lock = threading.Lock()
        self._db = connect(dsn, self.path, f"libos broker {broker}" if broker else "libos")
        try:
            if writer:
                self._lock_fd = self._take_writer_lock()
            self._settings()
            with self._lock:
                migrate_postgres(self._db, self._now(), self.path)
                self._find_checks()
                last = self._db.execute(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        except BaseException:
            self.close()
            raise
        self._head: tuple[int, str] = (last[0], last[1]) if last else (0, GENESIS)
        self._durable_head = self._head
        if writer:  # a connection lost is made again, with its locks (or a typed error if
            self._db.on_reconnect = _weakly(self._reconnected)  # another took them, or wrote)
        if self._lock_fd is not None:
            self._check_anchor()
        # Dropped without `close` (garbage collected): its session, its locks and its anchor
        # file's lock go with it, not at the process's end (a second store could not open
        # as the writer). (Weakly called back: the connection must not keep the store.)
        self._dropped = weakref.finalize(
            self, _let_go, self._db, self._lock_fd,
            None if self._lock_fd is None else take_number(self._lock_fd), self._opener)
        self._dropped.atexit = False  # (at exit the process lets go of them anyway)

    def _close_store(self) -> None:
        # The server frees a closed session's locks when its backend exits, which may come
        # after the next broker's open (a reopen was refused): let go of the writer lock first.
        with self._lock:
            if self._lock_fd is not None:
                with contextlib.suppress(Exception):
                    self._db.raw.rollback()
                    self._db.execute("SELECT pg_catalog.pg_advisory_unlock_all()")
        super().close()

    _publishes = True
    _refuses_nul = True  # (see `AuditChain._chain_row`)

    def broker_anchors(self) -> list[Anchor]:
        """Every anchor of this database's chain: each writer's signed anchor published in
        the database (found from any host), and the anchor files on this host of the brokers
        that share it and of a single writer (out of reach of whoever writes the database
        alone: they still name a tail cut off with the published anchors put back)."""
        found = [Anchor(_anchor_name(name), None, signed)
                 for name, signed in self.published_anchors()]
        paths = sorted(self._brokers_dir.glob("*.anchor")) if self._brokers_dir.is_dir() else []
        single = self._brokers_dir.parent / "anchor"
        if single.exists():
            paths.append(single)
        for path in paths:
            head, signed = read_anchor_file(path)
            found.append(Anchor(f"the anchor file {path.name} on this host", head, signed))
        return found

    def remembered_anchor(self) -> Signed | None:
        """The newest trusted anchor `libos audit --verify` saw on this host: kept outside
        the database (beside its address, under the user's state directory), so a chain put
        back to an older genuine state, anchors and all, is still named here."""
        return read_anchor_file(self._brokers_dir.parent / "verified")[1]

    def remember_anchor(self, signed: Signed) -> None:
        old = self.remembered_anchor()
        if old is not None and old.seq >= signed.seq:
            return
        path = self._brokers_dir.parent / "verified"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            write_signed(fd, signed)
        finally:
            os.close(fd)

    def _take_writer_lock(self) -> int:
        """The anchor file, flocked (one writer per anchor on this host), and the database's
        writer lock (one writer per database, whatever the host)."""
        Path(self._anchor_path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = take_writer_lock(self._anchor_path)
        if fd is None:
            raise self._taken()
        try:
            # The anchor's flock is ours, so no broker on this host holds the store; a
            # session lock still held is another host's, or the session of a broker here that
            # just died (SIGKILL), until its backend sees the socket gone: wait that out.
            self._session_locks_within(OPEN_PATIENCE_S)
        except BaseException:
            release_writer_lock(fd)
            raise
        return fd

    def _settings(self) -> None:
        settings = list(PINNED_SETTINGS)  # (whatever a writer set for the database's sessions)
        if self._durability is not None:
            settings.append(f"SET synchronous_commit = {self._durability}")
        if self._shared:
            # A broker frozen inside a transaction (SIGSTOP, a stalled host) holds the write
            # lock every broker needs: the server ends its session after this long, and the
            # frozen broker, woken, finds its connection gone (and its leases, soon).
            settings.append(f"SET idle_in_transaction_session_timeout = {IDLE_IN_WRITE_MS}")
        self._db.execute("; ".join(settings))

    def _reconnected(self) -> None:
        if self._written_meanwhile is not None:  # for good: never append on a stale head
            raise WrittenMeanwhile(self._written_meanwhile)
        # The lost session's locks are the server's until its backend sees the socket gone:
        self._session_locks_within(RELOCK_PATIENCE_S)
        self._settings()
        self._pin_search_path()
        self._name_again()  # (the database under its name may be another now)
        if not self._shared:
            self._check_unwritten()

    def _went_through(self, exc: BaseException, waiting: int,
                      head: tuple[int, str] | None = None, *, own: bool = False) -> bool:
        """The connection broke at the end of a write (its COMMIT, or its one INSERT, sent;
        its answer lost): connect again now and read the chain's head. The head this write
        would have made (its records' hash covers them and every record before) says it
        committed: it has, the caller goes on, nothing is written twice. Else (or the server
        not reachable yet: `_lost` lets a later reconnect tell) it did not."""
        if head is None:  # (a transaction's: its own records end at `_writing_head`; its
            # own other writes, `own`, were its caller's too: an event, a process's row)
            own = own or self._writing_head is not None
            dues = [h for h in (self._anchor_due, self._writing_head) if h is not None]
            head = max(dues) if dues else None
        else:  # (one INSERT of every record that waited, and its own past them, if any)
            own = head != self._head
        if (self._shared or head is None or not isinstance(exc, StoreUnavailable)
                or head == self._durable_head):
            return False
        lost = self._lost = _Lost(head, waiting, own)
        try:
            self._db.execute("SELECT 1")  # (connects again: `_check_unwritten`)
        except Conflict:  # (not reachable yet, or not ours to write: the caller's error)
            lost.requeued = True  # (the caller puts its deferred writes back to wait)
            return False
        return lost.found

    def _commit_in_doubt(self) -> bool:
        return self._lost is not None  # (told when the server is reached: `_check_unwritten`)

    def _check_unwritten(self) -> None:
        """A single writer back after its connection broke: the chain's head in the database
        must be the head it last committed (rows waiting for a commit are its own, not
        written yet), or the head of the write whose answer the break lost (`_went_through`:
        its own), else another wrote the store meanwhile and this writer's head, and what
        it keeps waiting, are stale: `WrittenMeanwhile`, now and at every later statement."""
        row = self._db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1"
                               ).fetchone()
        found = (row[0], row[1]) if row else (0, GENESIS)
        lost, self._lost = self._lost, None
        if lost is not None and found == lost.head and found != self._durable_head:
            if not lost.requeued:
                lost.found = True  # (found while its transaction still ends: it goes on)
                return
            if not lost.own:  # only deferred writes in it (some of those that wait, when
                # they were committed one at a time): they committed
                self._took_lost(lost)
                return
            # (Its own record, whose caller was told it failed: the broker's memory does not
            # have what it wrote. Stop, as below: a reopen reads the store as it is.)
        if found != self._durable_head:
            self._written_meanwhile = (
                f"the audit chain of {self.path} was written while this broker's connection"
                f" was lost (its head is seq {found[0]}, this broker last committed seq"
                f" {self._durable_head[0]}; or a commit whose answer was lost went through):"
                " this broker no longer writes it; reopen the store")
            raise WrittenMeanwhile(self._written_meanwhile)

    def _insert_at_once(self, rows: list[tuple[Any, ...]]) -> bool:
        self._db.ready()  # (before it takes what waits: some of it may prove committed)
        return super()._insert_at_once(rows)

    def _took_lost(self, lost: _Lost) -> None:
        """A commit whose answer was lost committed its deferred writes (the first
        `lost.waiting` of those waiting again): they are done, not written twice."""
        with self._lock:
            waiting = self._deferred or []
            done, self._deferred = waiting[:lost.waiting], waiting[lost.waiting:] or None
            self._committed_total += len(done)
            ahead = self._head  # (records deferred since follow it: they wait on)
            self._move_head(lost.head)
            self._head = ahead
            for write in done:
                landed = getattr(write, "after_commit", None)
                if landed is not None:
                    landed()

    def _session_locks_within(self, patience_s: float) -> None:
        deadline = time.monotonic() + patience_s
        while True:
            try:
                return self._session_locks()
            except Conflict:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _session_locks(self) -> None:
        """The database's writer lock (one writer per database, whatever the host), or for
        one of many brokers its shared form and the lock of its identity."""
        if self.broker is None:
            got = self._db.execute(f"SELECT pg_catalog.pg_try_advisory_lock({WRITER_LOCK})"
                                   ).fetchone()[0]
        else:
            got = self._db.execute(f"SELECT pg_catalog.pg_try_advisory_lock_shared({WRITER_LOCK})"
                                   ).fetchone()[0]
            if got and not self._db.execute(
                    f"SELECT pg_catalog.pg_try_advisory_lock({IDENTITY_LOCK},"
                    " pg_catalog.hashtext(?::pg_catalog.text))",
                    (self.broker,)).fetchone()[0]:
                raise self._taken()
        if not got:
            raise Conflict(f"another broker has {self.path} open"
                           + (" alone" if self.broker else ""))

    def _taken(self) -> Conflict:
        if self.broker is None:
            return Conflict(f"another broker has {self.path} open")
        return DuplicateBroker(f"another broker with identity {self.broker!r} has {self.path}"
                               " open")


    def _notify(self, db: Db, what: str) -> None:
        db.execute(f"SELECT pg_catalog.pg_notify('{NOTICES}', ?)", (what,))

    def wait_for_notice(self, timeout: float) -> list[str]:
        """Block (in a worker thread) until another process tells the brokers of a change
        (an answer, a control), or `timeout` seconds pass; whether one came. Its own
        connection, made on first use, listens; a lost one is made again next time."""
        psycopg = driver()
        with self._listen_lock:
            try:
                if self._listener is None or self._listener.closed:
                    # (UTF-8 as the store's session, whatever a writer set for the
                    # database's: their SQL_ASCII failed a notice of theirs undecoded, a
                    # UnicodeDecodeError out of the kernel's listening task: red team 44)
                    self._listener = psycopg.connect(self._dsn, autocommit=True,
                                                     connect_timeout=10,
                                                     application_name="libos listener",
                                                     client_encoding="UTF8")
                    self._listener.execute(f"LISTEN {NOTICES}")
                return [told.payload for told in self._listener.notifies(timeout=timeout,
                                                                         stop_after=1)]
            except psycopg.Error:
                if self._listener is not None:
                    self._listener.close()
                time.sleep(timeout)  # the polling goes on meanwhile
                return []

    def close(self) -> None:
        dropped = getattr(self, "_dropped", None)
        if dropped is not None and os.getpid() != self._opener:
            # A forked child's copy: the same server session (and listener) as its parent's,
            # its locks and writes still the parent's. The child lets go of its own copies
            # alone, as when its copy is collected (`_let_go`).
            dropped()
            return
        if dropped is not None:
            dropped.detach()  # closed here, not again when collected
        with self._listen_lock:
            if self._listener is not None:
                self._listener.close()
        self._close_store()

    def _batch(self) -> contextlib.AbstractContextManager[Any]:
        return self._db.batch()

    def _begin_write(self, db: Db) -> None:
        db.execute("BEGIN")
        db.execute(f"SELECT pg_catalog.pg_advisory_xact_lock({WRITE_LOCK})")

    def _rollback(self) -> None:
        # The server ends a lost session's own; a rollback that fails otherwise must not
        # hide the error that made it.
        with contextlib.suppress(StoreFailed):
            super()._rollback()



def _anchor_name(name: str) -> str:
    """Whose anchor a row says it is, as a problem line names it: a row is anyone's to write,
    so a name no broker can have is shown escaped and cut short, never as written."""
    if not name:
        return "the single writer's anchor in the store"
    if valid_identity(name):
        return f"broker {name}'s anchor in the store"
    return f"an anchor in the store under a name no broker can have ({name[:32]!r})"


def valid_identity(broker: object) -> bool:
    return isinstance(broker, str) and re.fullmatch(r"[A-Za-z0-9._-]{1,64}", broker) is not None


def shown_address(dsn: str) -> str:
    """The address without its password (for messages and `store.path`)."""
    try:
        info = driver().conninfo.conninfo_to_dict(dsn)
    except InvalidArgument:
        raise
    except Exception:
        raise InvalidArgument("not a PostgreSQL address") from None
    # (a hostaddr alone is where libpq connects: shown, not the default host's name)
    host = info.get("host") or info.get("hostaddr") or "localhost"
    if ":" in host and not host.startswith(("/", "[")):  # an IPv6 address, as a URI writes it
        host = f"[{host}]"
    port = info.get("port") or "5432"
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{info.get('dbname') or ''}"


def _weakly(method: Callable[[], None]) -> Callable[[], None]:
    """`method`, called while its object lives, not kept alive by whoever holds this."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


def _let_go(db: PgConnection, lock_fd: int | None, take: int | None, opener: int) -> None:
    """What a store dropped unclosed held, let go (what it deferred is lost with it, as in a
    crash: nothing of it was acknowledged as durable): a writer's session locks first (the
    server frees a closed session's only when its backend exits), on the connection as it
    is (never connecting again, from a finaliser), then its session and its anchor file.
    Only in the process that opened it: a forked child's copy is the same server session,
    still the parent's (its locks, its writes); the child lets go of its copies alone (the
    driver's own finaliser sends nothing from a child; the anchor file's lock: its copy)."""
    if os.getpid() != opener:
        if lock_fd is not None:
            release_if_still_taken(lock_fd, take)
        return
    try:
        if lock_fd is not None and not db.raw.closed:
            with contextlib.suppress(Exception):
                db.raw.rollback()
                db.raw.execute("SELECT pg_catalog.pg_advisory_unlock_all()")
        db.close()
    finally:
        if lock_fd is not None:
            release_if_still_taken(lock_fd, take)
