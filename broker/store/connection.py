"""The connection every table module of a store shares, and what differs between backends.

All access goes through one connection under a lock, because wasm tools answer cheap
syscalls from a worker thread. A backend (`broker.store.sqlite`, `broker.store.postgres`)
opens it; the modules beside this one (the audit chain, approvals, processes, objects, tools,
durable state) are mixins that reach it only through `transaction()` and `_query()`, with SQL
both backends run: `?` placeholders, `ON CONFLICT` upserts, `RETURNING` for new ids, and no
`x IS NULL OR` on a parameter (PostgreSQL cannot type it). What cannot be written once is a
method of the backend (`_begin_write`, `_index_hint`).

The connection is sqlite3's, or one shaped like it (`broker.store.pg_connection`): rows read
by column name or position.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Protocol

from broker.errors import Conflict
from broker.json_text import encoder
from broker.store.refusals import (
    RefusedBeside,
    WriteRefused,
    owners_of,
    refused_for_good,
    told,
)
from broker.store.writer_lock import release_writer_lock

log = logging.getLogger("libos.store")

dump_json: Callable[[Any], str] = encoder()  # compact JSON, its encoder built once
_ascii_json = json.JSONEncoder(separators=(",", ":")).encode


def dump_storable_json(value: Any) -> str:
    """`dump_json`, or escaped to ASCII if it holds a lone surrogate (hostile tool output can:
    JSON escapes one), which no database takes as UTF-8: for a write that may wait for a
    commit (an event, a process's end), where it would be refused. Read back as the same
    value. (`isascii` is O(1): only non-ASCII text is checked.)"""
    text = dump_json(value)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return _ascii_json(value)
    return text


class Row(Protocol):
    def __getitem__(self, key: int | str) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Db(Protocol):
    """The part of a DB-API connection the table modules use (sqlite3's shape)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, params: Any) -> Any: ...

    def close(self) -> None: ...

    @property
    def in_transaction(self) -> bool: ...


class Connected:
    """What a backend's `__init__` sets up, and the primitives every table module uses.

    `_lock_fd` is the writer's open anchor file (see `broker.store.anchor`); a store without
    one was opened read-only."""

    _now: Callable[[], float]
    _lock: threading.RLock
    _lock_fd: int | None
    _anchor_path: str
    _db: Db

    @property
    def _memory_name(self) -> str:
        """The lock file's place the anchor's memory is keyed by (`broker.store.remembered`)."""
        return self._anchor_path

    # Writes that may wait for the next transaction (see `defer`), oldest first.
    _deferred: list[Callable[[Db], Any]] | None = None
    _deferred_total = 0  # see `deferred_total`
    # Per process: a deferred write of its that the store refused for good (`_drop`).
    _refusals: dict[int, WriteRefused] | None = None
    _committed_total = 0

    def close(self) -> None:
        with self._lock:
            try:
                if self._lock_fd is not None and self.deferred:
                    self.commit_deferred()  # what was deferred is written before it closes
            finally:  # a store whose last write (or its close) failed still lets go of the file
                try:
                    self._db.close()
                finally:
                    if self._lock_fd is not None:
                        release_writer_lock(self._lock_fd)  # (for a child's copy too)
                        self._lock_fd = None

    def _require_writer(self) -> None:
        if self._lock_fd is None:
            raise Conflict("this store was opened read-only")

    def _begin_write(self, db: Db) -> None:
        """Start a transaction that holds the store's write lock from its first statement."""
        raise NotImplementedError

    def _batch(self) -> AbstractContextManager[Any]:
        """Where a write transaction is sent (PostgreSQL: in one batch, `pg_connection`)."""
        return nullcontext()

    def _rollback(self) -> None:
        """End a write transaction that failed, if it began."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def _fenced(self) -> bool:
        """Does the calling task write under a lease (`broker.store.leases`)?"""
        return False

    def _fence(self, db: Db) -> None:
        """Checked at the start of every write transaction, under the write lock: nothing
        here; the lease of the process the calling task writes for, where there is one
        (`broker.store.leases`)."""

    def _notify(self, db: Db, what: str) -> None:
        """Tell brokers listening on the store that `what` changed ("approval", "control"),
        when the transaction commits; nothing for a store no other process shares."""

    def wait_for_notice(self, timeout: float) -> list[str]:
        """Wait until another process tells of a change, or `timeout` seconds; what it told
        (a hint, never trusted: the store is read again). A store nobody shares is never
        told (its broker polls)."""
        time.sleep(timeout)
        return []

    def _index_hint(self, index: str) -> str:
        """SQL after a table's name that makes a query use `index` (or fail), if the backend
        has such a thing; else nothing."""
        return ""

    @property
    def deferred(self) -> bool:
        """Writes are waiting for the next transaction."""
        return bool(self._deferred)

    @property
    def deferred_total(self) -> int:
        """How many writes were ever deferred. They commit oldest first: the n-th is durable
        once `committed_total` >= n."""
        return self._deferred_total

    @property
    def committed_total(self) -> int:
        return self._committed_total

    def defer(self, write: Callable[[Db], Any]) -> None:
        """Group commit: `write` runs at the start of the next transaction (whoever opens it),
        or before the next read, so one commit carries it with what follows. Only for a write
        whose loss in a crash acknowledges nothing: nothing may be shown to a sandbox, a
        person or the world on its strength until a later write has committed it. A `write`
        with an `after_commit()` has it called right after that commit, under the store's lock
        (on whichever thread committed): it must not block or raise."""
        if self._fenced():  # a leased task's write is checked by its own fence, never
            with self._lock:  # carried by another task's transaction
                with self.transaction() as db:
                    write(db)
                landed = getattr(write, "after_commit", None)
                if landed is not None:
                    landed()
            return
        with self._lock:
            self._require_writer()
            self._defer_checked(write)

    def _defer_checked(self, write: Callable[[Db], Any]) -> None:
        """`defer`, for a caller that holds the lock and has checked what `defer` checks (a
        writer, whose calling task writes under no lease): two records of every warm call
        come this way."""
        if self._deferred is None:
            self._deferred = []
        self._deferred.append(write)
        self._deferred_total += 1

    @contextmanager
    def transaction(self, *, carrying_only: bool = False) -> Iterator[Db]:
        """The write lock is taken up front (`_begin_write`), so two brokers (or a CLI
        answering an approval) never interleave a read-modify-write. Deferred writes run
        first, in the same transaction; if it rolls back they wait for the next one, unless
        the store refused one of them for good (`broker.store.refusals`): that one is set
        aside (`_set_aside_refused`), and the transaction is made again without it (or, if
        its own statements ran already, fails with `RefusedBeside`: nothing of it written).
        `carrying_only`: the block writes nothing of its own (`commit_deferred`): a commit
        whose answer was lost is then the deferred writes' alone (`_went_through`)."""
        with self._lock:
            while True:
                waiting: list[Callable[[Db], Any]] = []
                ending = body = False
                try:
                    with self._batch():  # PostgreSQL: the whole transaction in one round trip
                        # (taken once the batch has its connection: a connection made again
                        # may find some of them committed by a commit whose answer was lost)
                        waiting, self._deferred = self._deferred or [], None
                        self._begin_write(self._db)
                        self._fence(self._db)
                        for write in waiting:
                            write(self._db)
                        body = True
                        yield self._db
                        ending = True
                        self._db.execute("COMMIT")
                except BaseException as exc:
                    self._rollback()
                    if ending and self._went_through(exc, len(waiting),
                                                     own=not carrying_only):
                        break
                    self._deferred = [*waiting, *(self._deferred or ())]
                    self._rolled_back()
                    if not (waiting and refused_for_good(exc) and self._set_aside_refused()):
                        raise
                    if body:  # (its own statements cannot be run again from here)
                        raise RefusedBeside("a write that waited for this commit was refused"
                                            " by the store and set aside; nothing of this"
                                            " transaction was written: try again") from exc
                    continue  # (its body has not run: made again without what was refused)
                break
            self._landed(waiting)

    def _landed(self, waiting: list[Callable[[Db], Any]]) -> None:
        """After the commit that carried `waiting` (the oldest deferred writes)."""
        self._committed_total += len(waiting)
        self._committed()
        for write in waiting:  # a deferred write that shows something once it is durable
            landed = getattr(write, "after_commit", None)
            if landed is not None:
                landed()

    def _set_aside_refused(self) -> bool:
        """After a transaction that carried deferred writes was refused for good: each write
        that waits committed alone, oldest first, and one the store refuses for good dropped,
        its owner told (`refusals_of`); one that holds `items` of several processes (the
        checkpoints of a `CheckpointBatch`, the events a process's end carries) is tried an
        item at a time, so only the refused item is dropped. True if one was. A failure that
        passes (or a refused audit record, which the chain after it stands on: `AuditChain`
        refuses such a value before chaining it) stops here: the rest waits, as it was."""
        dropped = False
        while self._deferred:
            write, *rest = self._deferred
            self._deferred = None
            exc = self._alone(write)
            if exc is not None and refused_for_good(exc) and len(getattr(write, "items", ())) > 1:
                exc, some = self._items_alone(write)
                dropped = dropped or some
            if exc is not None and (not refused_for_good(exc)
                                    or not getattr(write, "droppable", True)):
                self._deferred = [write, *rest, *(self._deferred or ())]
                return dropped
            self._deferred = [*rest, *(self._deferred or ())]
            if exc is None:
                self._landed([write])
            else:
                self._drop(write, exc)
                dropped = True
        self._deferred = None
        return dropped

    def _alone(self, write: Callable[[Db], Any]) -> BaseException | None:
        """`write` in a transaction of its own: None once it has committed, else what failed
        it (rolled back)."""
        try:
            with self._batch():
                self._begin_write(self._db)
                self._fence(self._db)
                write(self._db)
                self._db.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if self._went_through(exc, 1):
                return None
            self._rolled_back()
            return exc
        return None

    def _items_alone(self, write: Any) -> tuple[BaseException | None, bool]:
        """A write of several processes' `items`, an item at a time: those the store refuses
        for good dropped (their processes told, and the write, by its `set_aside(item)` if it
        has one), the others committed. None once every item is settled, else the failure
        (one that passes) that stopped it: the items left wait, in the same write (so the
        count of what waits is kept); and whether one was dropped."""
        items, dropped = list(write.items), False
        set_aside = getattr(write, "set_aside", None)
        for at, item in enumerate(items):
            write.items = [item]
            exc = self._alone(write)
            if exc is None:
                continue
            if not refused_for_good(exc):
                write.items = items[at:]
                return exc, dropped
            self._tell(owners_of(write), exc)
            if set_aside is not None:
                set_aside(item)
            dropped = True
        write.items = []
        return None, dropped

    def _drop(self, write: Callable[[Db], Any], exc: BaseException) -> None:
        """A deferred write the store refused for good: counted as settled (the writes after
        it commit), its owners told."""
        self._committed_total += 1
        self._tell(owners_of(write), exc)

    def _tell(self, owners: list[Any], exc: BaseException) -> None:
        refused = WriteRefused(f"the store refused a write that waited for a commit"
                               f" ({type(exc).__name__}: {str(exc)[:200]}); nothing of it"
                               " was written")
        log.error("a deferred write was refused by the store and set aside: %s", refused.message)
        for owner in told(owners):
            if self._refusals is None:
                self._refusals = {}
            self._refusals.setdefault(owner, refused)

    def refusals_of(self, pid: int) -> WriteRefused | None:
        """Taken once: why a deferred write made for process `pid` was set aside, if one was
        (its scheduler ends it with this, as for a write of its own that failed)."""
        if not self._refusals:  # (every step asks: no lock taken while none was refused)
            return None
        with self._lock:
            return self._refusals.pop(pid, None)

    def _committed(self) -> None:
        """After each commit: nothing here (the audit chain anchors its new head)."""

    def _rolled_back(self) -> None:
        """After a rollback: nothing here."""

    def _process_inserted(self, pid: int) -> None:
        """Inside the transaction that stores a new process's row: nothing here."""

    def _went_through(self, exc: BaseException, waiting: int,
                      head: tuple[int, str] | None = None, *, own: bool = False) -> bool:
        """A write whose end (its COMMIT, `waiting` deferred writes in it) failed with `exc`:
        did it commit all the same (PostgreSQL: its answer was lost with the connection)?
        `head`: the chain's head it wrote, if the caller knows; `own`: a transaction's
        block wrote statements of its own (its caller is told if it failed). Here: no."""
        return False

    def _commit_in_doubt(self) -> bool:
        """A commit whose answer was lost may have committed what it carried, and nobody can
        tell yet (PostgreSQL: `_went_through` could not reach the server). Here: never."""
        return False

    def commit_deferred(self) -> None:
        """Deferred writes committed now, if any wait."""
        with self._lock:
            if self.deferred:
                try:
                    with self.transaction(carrying_only=True):
                        pass
                except RefusedBeside:  # (one was set aside, its owner told; this empty
                    self.commit_deferred()  # transaction lost nothing: what is left, now)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            if self.deferred:  # a reader sees what this writer has written
                self.commit_deferred()
            return self._db.execute(sql, params).fetchall()


def where(conditions: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """` AND col=?` for each condition whose value is not None, and their values: optional
    filters written once for both backends."""
    given = {k: v for k, v in conditions.items() if v is not None}
    return "".join(f" AND {k}=?" for k in given), tuple(given.values())
