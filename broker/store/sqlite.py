"""The embedded store: one SQLite file in WAL mode.

Every write is its own committed transaction before the call returns, so what the kernel has
acknowledged survives `kill -9` of the broker (WAL with synchronous=NORMAL loses nothing on a
process crash; only a power cut can take the last commits).

One broker writes a store at a time: a writer holds an exclusive lock on `<db>.lock` (and one
keyed by the file's inode, for its other names: `store_file.file_lock_path`), which lets it
keep the head of the audit chain in memory (one INSERT per record, no read-back). A write
transaction is BEGIN IMMEDIATE: it holds SQLite's write lock from its start. (The
PostgreSQL store, `broker.store.postgres`, says what stands for each of these there.) Opening
applies the schema migrations the file lacks (`broker.store.migrations`).
The same file holds the chain's anchor, signed with a key kept outside the store (see
`broker.store.anchor` and `broker.store.keys`). Readers (the CLI's
tables) open without the lock.

This module opens the file; the tables are kept by one mixin each, on the one connection
they share (`broker.store.connection`): the audit chain (`chain`), approvals (`approvals`),
images, processes, capabilities and events (`processes`), grants with their records (`grants`),
Object Memory (`objects`), tool sources and registrations (`tools`), durable process state
(`durable`), checkpoints (`checkpoints`) and a process's image replaced in one transaction
(`switch`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from broker.errors import Conflict, InvalidArgument
from broker.store import remembered
from broker.store.audit import GENESIS
from broker.store.connection import Db
from broker.store.ctrl_c import protect_from_ctrl_c
from broker.store.keys import AuditKey, key_path, writer_key
from broker.store.migrations import migrate_sqlite
from broker.store.probe import LOCK_SUFFIX, check_store_file
from broker.store.store_file import (
    check_made_here,
    check_opened,
    file_identity,
    file_lock_path,
    resolved,
    take_over_moved_lock,
)
from broker.store.tables import StoreTables
from broker.store.wal_checkpointer import FALLBACK_PAGES, WalCheckpointer
from broker.store.writer_lock import (
    release_if_still_taken,
    release_writer_lock,
    take_number,
    take_writer_lock,
)

DURABILITY = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


def _bind_as_is() -> None:
    """sqlite3 binds None and bytes (most audit columns are None) only after it has looked
    for an adapter, three failed lookups that each format an AttributeError: ~2,000
    instructions per value, ~14,000 per read's two records. An adapter that gives the value
    back as it is (registered unless one is) binds them the same way, found in one lookup.
    Process-wide, like every sqlite3 adapter, and changes no stored value."""
    for kind, same in ((type(None), {}.get), (bytes, bytes)):  # {}.get(None) is None
        if (kind, sqlite3.PrepareProtocol) not in sqlite3.adapters:
            sqlite3.register_adapter(kind, same)


_bind_as_is()


class SQLiteStore(StoreTables):
    """The store the kernel uses (see `broker.store.interface.Store`): one class, put together
    from one mixin per group of tables, all on one connection."""

    _checkpointer: WalCheckpointer | None = None  # a writer's (`broker.store.wal_checkpointer`)

    def __init__(self, path: str | Path, *, clock: Any = time.time, writer: bool = True,
                 durability: str = "normal", audit_key: AuditKey | str | Path | None = None
                 ) -> None:
        """`durability`: "normal" (the default: survives a crash of the broker), "full"
        (an fsync per commit: survives a power cut too), or "off" (benchmarks only).
        `audit_key`: the key a writer signs the chain's anchor with, or its path (default:
        `$LIBOS_AUDIT_KEY`, else `~/.config/libos/audit.key`; see `broker.store.keys`),
        made on first use."""
        protect_from_ctrl_c(type(self))  # opened alone too (`broker.store.ctrl_c`)
        self.path = str(path)
        # The file it names now: the lock beside it is the one every writer of it takes.
        self._file = resolved(self.path)
        # Where the store is, as a control request names it (with its first record: `identity`).
        self._place = f"sqlite {self._file}"
        if writer:  # (a link to no store: nothing made at the far end, red team 12)
            check_made_here(self.path, self._file)
        check_store_file(self._file, writer=writer)  # before anything is made beside it
        self._anchor_path = self._file + LOCK_SUFFIX
        # The anchor's memory is keyed by the name given, its own link not followed
        # (`remembered.place`): an older copy reached through a link put in its place is
        # named a rollback (red team 12), as before the lock moved beside the file.
        self._named_lock = os.path.abspath(self.path) + LOCK_SUFFIX
        self._key = writer_key(audit_key) if writer else None
        self._key_dir = (self._key.path if self._key is not None else key_path(
            audit_key.path if isinstance(audit_key, AuditKey) else audit_key)).parent
        self.sole_writer = writer  # it may keep files' labels in memory (`broker.store.labels`)
        self._now = clock
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._file_fd: int | None = None  # the lock on the file itself, whatever its name
        if self._key is not None:  # (a lock file where a broker from before kept it)
            take_over_moved_lock(self._named_lock, self._anchor_path, self._key.public)
            self._lock_fd = take_writer_lock(self._anchor_path)
            if self._lock_fd is None:
                raise Conflict(f"another broker has {self.path} open")
        if durability not in DURABILITY:
            raise ValueError(f"durability is one of {sorted(DURABILITY)}")
        synchronous = DURABILITY[durability]
        # A new store is made without waiting on the disk: switching an empty file to WAL and
        # creating the schema cost six fdatasyncs (a rollback journal, its directory, the
        # file, then the log's header and its directory), 0-25 ms of a cold start as other
        # writers load the disk (issue #17). A crash of the broker loses none of it (the OS
        # has it); a power cut before the first checkpoint (`WalCheckpointer`, within EVERY
        # seconds; it syncs the log, its directory and the file) can lose the new store, as
        # it can the commits since the last checkpoint at "normal" (README: costs).
        making = "OFF" if durability != "full" and _new_file(self._file) else synchronous
        before = file_identity(self._file) if writer else None  # (the file SQLite opens)
        try:
            self._db = sqlite3.connect(self._file, isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
            check_opened(self._db, self._file)
            if writer:  # (before SQLite reads it or makes its WAL beside this name)
                self._take_file_lock(before)
            self._db.execute(f"PRAGMA synchronous={making}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.row_factory = sqlite3.Row
            self._appends = self._db.cursor().execute  # (`RowsAtOnce._appends`)
            with self._lock:
                migrate_sqlite(self._db, self._now(), self.path)
                if making != synchronous:
                    self._db.execute(f"PRAGMA synchronous={synchronous}")
                last = self._db.execute(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        except BaseException as exc:
            # Not a store (another file, a damaged database), or one a newer libos migrated:
            # a typed error, nothing kept open.
            if hasattr(self, "_db"):
                self._db.close()
            for fd in (self._lock_fd, self._file_fd):
                if fd is not None:
                    release_writer_lock(fd)
            self._lock_fd = self._file_fd = None
            if isinstance(exc, sqlite3.Error):
                raise InvalidArgument(f"{self.path} is not a libos store: {exc}") from None
            raise
        self._head: tuple[int, str] = (last[0], last[1]) if last else (0, GENESIS)
        if self._lock_fd is not None:
            self._check_anchor()
            # The WAL copied back on a thread of its own, not in the commits the broker's
            # processes wait for (`broker.store.wal_checkpointer`).
            try:
                self._checkpointer = WalCheckpointer(self._file, DURABILITY[durability])
            except (sqlite3.Error, RuntimeError):  # (no connection, or no thread: the commits
                # checkpoint, as SQLite does by default)
                pass
            else:
                self._db.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_PAGES}")
        # Dropped without `close` (garbage collected): its thread, connection and lock go
        # with it, not at the process's end (a second store could not open the file).
        self._dropped = weakref.finalize(
            self, _let_go, self._db, [(fd, take_number(fd)) for fd in (
                self._lock_fd, self._file_fd) if fd is not None], self._checkpointer)
        self._dropped.atexit = False  # (at exit the process lets go of them anyway)

    def close(self) -> None:
        dropped = getattr(self, "_dropped", None)
        if dropped is not None:
            dropped.detach()  # closed here, not again when collected
        checkpointer, self._checkpointer = self._checkpointer, None
        try:
            if checkpointer is not None:
                checkpointer.stop()
        finally:  # (a Ctrl-C in the join still lets the writer go: its lock, its connection)
            try:
                super().close()
            finally:
                with self._lock:
                    file_fd, self._file_fd = self._file_fd, None
                    if file_fd is not None:
                        release_writer_lock(file_fd)

    def _take_file_lock(self, before: tuple[int, int] | None) -> None:
        """Conflict if another writer has the file SQLite opened, under any name
        (`broker.store.store_file.file_lock_path`; `before`: the file's identity just before
        SQLite's open)."""
        where = file_lock_path(self._key_dir, self._file, before)
        try:
            self._file_fd = None if where is None else take_writer_lock(where)
        except OSError:  # (a key directory the writer cannot write: DESIGN §9)
            return
        if where is not None and self._file_fd is None:
            raise Conflict(f"another broker has the file {self.path} names open (under "
                           "another name: a hard link)")

    def anchor_memory(self) -> Path | None:
        """Where this user's key (the writer's, or the default one a reader would sign with)
        remembers the newest anchor signed for this store (`broker.store.remembered`)."""
        return remembered.place_in(self._key_dir, self._named_lock)

    @property
    def _memory_name(self) -> str:
        return self._named_lock

    def _begin_write(self, db: Db) -> None:
        db.execute("BEGIN IMMEDIATE")


def _new_file(path: str) -> bool:
    """Whether the store at `path` is yet to be made (no file, or an empty one)."""
    try:
        return os.stat(path).st_size == 0
    except FileNotFoundError:
        return True


def _let_go(db: sqlite3.Connection, locks: list[tuple[int, int | None]],
            checkpointer: WalCheckpointer | None) -> None:
    """What a store dropped unclosed held, let go (what it deferred is lost with it, as in a
    crash: nothing of it was acknowledged as durable). The checkpointer's thread is told to
    stop, not waited for: a finaliser may run on any thread, inside a collection."""
    try:
        if checkpointer is not None:
            checkpointer.stop(wait=False)
        db.close()
    finally:
        for fd, take in locks:
            release_if_still_taken(fd, take)

    def _index_hint(self, index: str) -> str:
        return f"INDEXED BY {index}"
