"""A psycopg 3 connection in the shape the store's table modules use (sqlite3's): `execute`
with `?` placeholders returning a cursor whose rows are read by column name or position.

psycopg is imported lazily (by `connect`): it is the optional extra `postgres`, and nothing
of it is loaded by a user of SQLite. A connection that breaks mid-run (the server gone, the
network cut) is `StoreUnavailable`, a typed error, never a driver traceback (and any other
error of the driver's is `StoreFailed`, of which it is a kind); a store that
asks for it (a writer) connects again on the next statement after that. A
value the server cannot hold (text with a NUL character, which SQLite keeps and PostgreSQL
refuses; an integer past 64 bits) is `InvalidArgument`, and the statement (its transaction)
writes nothing.

A write transaction is sent as one batch (`batch`): its statements are kept, each bound to
its values by psycopg's quoting for the session (`ClientCursor.mogrify`), and sent together as
one query of several statements when the transaction ends, or when something in it reads a
result (a read, or a row count, sends the batch so far). So the whole transaction costs one
round trip, and the server runs it from BEGIN to COMMIT without waiting for the broker. A
statement that fails stops the rest (the COMMIT with them, so nothing is written) and is
raised where the batch was sent. A check the
server makes (a fence, the chain's head) raises an error of its own SQLSTATE, which the store
maps to its typed error (`errors`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from broker.errors import Conflict, InvalidArgument

# Seconds a writer waits, after a failed try to connect again, before the next: the first, at
# most (doubling between).
RETRY = (0.05, 2.0)


class StoreFailed(Conflict):
    """The store's database failed a statement (a trigger, a constraint, a disk that is full,
    a lock it gave up on): its transaction is rolled back, so nothing of the call that got
    this was written. (Not a check the server makes for the store, which has an error of its
    own, nor a value it cannot hold: `InvalidArgument`.)"""


class StoreRefused(StoreFailed):
    """A row the database refuses for good (a constraint it breaks): writing it again fails
    the same way (`broker.store.refusals`)."""


class StoreUnavailable(StoreFailed):
    """The store's database cannot be reached, or its connection broke: nothing was written
    by the call that got this (a transaction cut off is rolled back by the server)."""


class PgRow:
    """A row read by column name or by position, like `sqlite3.Row` (`dict(row)` works)."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def keys(self) -> list[str]:
        return list(self._index)

    def __iter__(self) -> Any:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _rows(cursor: Any) -> Any:
    """psycopg row factory: each row a `PgRow` over the cursor's column names."""
    index = {column.name: i for i, column in enumerate(cursor.description or ())}

    def make(values: Sequence[Any]) -> PgRow:
        return PgRow(index, values)

    return make


@lru_cache(maxsize=512)
def _format(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled). The store's SQL never
    holds a `?` or a `%` inside a string literal."""
    return sql.replace("%", "%%").replace("?", "%s")


def driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise InvalidArgument("a PostgreSQL store needs psycopg: pip install 'libos[postgres]'"
                              ) from None
    return psycopg


def connect(dsn: str, shown: str, name: str = "libos") -> PgConnection:
    """Connect in autocommit mode (transactions are explicit, as with SQLite). `shown` is the
    DSN without its password, for messages; `name` is the session's application_name (what
    an operator sees in pg_stat_activity)."""
    psycopg = driver()
    try:
        # (UTF-8 whatever a writer set for the database's sessions: their SQL_ASCII had text
        # read back as bytes, a TypeError at the open)
        conn = psycopg.connect(dsn, autocommit=True, row_factory=_rows, connect_timeout=10,
                               application_name=name, client_encoding="UTF8")
    except psycopg.ProgrammingError as exc:  # a DSN libpq cannot parse
        raise InvalidArgument(f"not a PostgreSQL address: {shown}: {exc}") from None
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot reach the store at {shown}: "
                               f"{str(exc).strip()[:300]}") from None
    conn.adapters.register_dumper(float, _float8_dumper(psycopg))
    return PgConnection(conn, shown, psycopg, dsn, name)


@lru_cache(maxsize=1)
def _float8_dumper(psycopg: Any) -> type:
    """A float a batch binds (`ClientCursor.mogrify`) as a literal typed as it is stored,
    `pg_catalog.float8`: bare, it was a numeric, for which the catalog has no operator with a
    double precision, and a writer's `>` of the two, beside the store's tables (in the path
    every session pins), was the exact match: an expired lease renewed (red team 40)."""
    from psycopg.types.numeric import FloatDumper

    class Float8(FloatDumper):
        def quote(self, obj: Any) -> bytes:
            return b"(" + bytes(super().quote(obj)) + b")::pg_catalog.float8"

    return Float8


class PgConnection:
    def __init__(self, conn: Any, shown: str, psycopg: Any, dsn: str, name: str) -> None:
        self.raw = conn
        self._raw_pid = os.getpid()  # the process whose session `raw` is
        self._name = name
        self._shown = shown
        self._dsn = dsn
        # Set by a store that connects again after a connection broke (its session's locks
        # and settings made again, or an error: the new session is closed); None: a broken
        # connection stays broken.
        self.on_reconnect: Callable[[], None] | None = None
        # SQLSTATE -> the typed error (made from the server's message and detail) of a check
        # the server makes (set by the store).
        self.errors: dict[str, Callable[[str, str | None], Exception]] = {}
        self._psycopg = psycopg
        # A batch's statements not sent yet (each bound to its values), with their cursors.
        self._queue: list[tuple[str, _Queued]] | None = None
        self._binder: Any = None
        self._retry_at = self._retry_delay = 0.0  # (`_reconnect`'s backoff)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._queue is not None:
            return self._enqueue(sql, params)
        self.ready()
        with self.translated():
            if params:
                return self.raw.execute(_format(sql), tuple(params))
            return self.raw.execute(sql)  # taken as written: it may hold several statements

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Statements kept until the block ends, or until one's result is read, then sent
        together in one round trip: an error among them is raised there (typed). A block
        that fails before anything was sent has sent nothing."""
        self.ready()
        self._queue = []
        try:
            yield
            self.flush()
        finally:
            self._queue = None

    def ready(self) -> None:
        """A broken connection made again now, for a store that asks for it."""
        if self.on_reconnect is not None and self.raw.closed:
            self._reconnect()

    def flush(self) -> None:
        """Send what a batch keeps, as one query of several statements (its values bound on
        this side, by psycopg's quoting for this session), and hand each its result."""
        queue = self._queue
        if not queue:
            return
        self._queue = []
        with self.translated():
            cursor = self.raw.cursor()
            # Never prepared (several statements cannot be): the simple query protocol.
            cursor.execute(";\n".join(text for text, _ in queue), prepare=False)
            for _, queued in queue:
                queued.answer(cursor.fetchall() if cursor.description is not None else [],
                              cursor.rowcount)
                cursor.nextset()

    def _enqueue(self, sql: str, params: Sequence[Any]) -> _Queued:
        assert self._queue is not None
        if self._binder is None or self._binder.connection is not self.raw:
            self._binder = self._psycopg.ClientCursor(self.raw)
        with self.translated():  # a value the server cannot hold is refused here
            text = self._binder.mogrify(_format(sql), tuple(params))
        queued = _Queued(self)
        self._queue.append((text, queued))
        return queued

    @property
    def in_transaction(self) -> bool:
        """A transaction is open (or aborted, waiting for its ROLLBACK) on the session."""
        return (not self.raw.closed
                and self.raw.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE)

    @contextmanager
    def translated(self) -> Iterator[None]:
        """The driver's errors as the store's typed errors."""
        psycopg = self._psycopg
        try:
            yield
        except psycopg.Error as exc:
            typed = self.errors.get(exc.sqlstate or "")
            if typed is not None:
                raise typed(exc.diag.message_primary or str(exc), exc.diag.message_detail
                            ) from None
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                raise self._unavailable(exc) from None
            if isinstance(exc, psycopg.DataError):
                raise self._unstorable(exc) from None
            if isinstance(exc, psycopg.IntegrityError):
                raise StoreRefused(f"the store refused a row ({str(exc).strip()[:300]});"
                                   " nothing of its transaction was written") from None
            raise StoreFailed(f"the store failed ({type(exc).__name__}: "
                              f"{str(exc).strip()[:300]}); nothing of its transaction was "
                              "written") from None

    def execute_script(self, sql: str) -> None:
        """Statements as written, with no parameters (a migration)."""
        self.execute(sql)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        rows = [tuple(p) for p in params]
        if not rows:
            return
        if self._queue is not None:
            for row in rows:
                self._enqueue(sql, row)
            return
        with self.translated(), self.raw.cursor() as cur:
            cur.executemany(_format(sql), rows)

    def close(self) -> None:
        """Close this process's session. A forked child's copy of its parent's is left
        alone: closing it would end the parent's session (the driver's own finaliser sends
        nothing from a child either)."""
        self.on_reconnect = None
        if os.getpid() == self._raw_pid:
            self.raw.close()

    def _reconnect(self) -> None:
        """A new session in place of the broken one (StoreUnavailable if the server still
        cannot be reached); nothing of the old session's transaction survives. A server that
        cannot be reached is tried again only after a delay that doubles (`RETRY`), not at
        every statement of every task meanwhile: those are told `StoreUnavailable` at once."""
        now = time.monotonic()
        if now < self._retry_at:
            raise StoreUnavailable(f"lost the store at {self._shown}; connecting again in "
                                   f"{self._retry_at - now:.1f} s")
        try:
            fresh = connect(self._dsn, self._shown, self._name)
        except StoreUnavailable:
            self._retry_delay = min(max(self._retry_delay * 2, RETRY[0]), RETRY[1])
            self._retry_at = time.monotonic() + self._retry_delay
            raise
        self._retry_delay = self._retry_at = 0.0
        self.raw, self._raw_pid = fresh.raw, os.getpid()
        assert self.on_reconnect is not None
        try:
            self.on_reconnect()
        except BaseException:  # (its locks not all retaken): no statement runs in this
            self.raw.close()  # session; the next one tries again
            raise

    @staticmethod
    def _unstorable(exc: Exception) -> InvalidArgument:
        return InvalidArgument(f"the store cannot hold this value: {str(exc).strip()[:200]}")

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"lost the store at {self._shown}: {str(exc).strip()[:300]}")


class _Queued:
    """The cursor of a statement kept in a batch: reading it (rows, or the row count) sends
    the batch so far and waits for the answers."""

    __slots__ = ("_at", "_conn", "_rowcount", "_rows")

    def __init__(self, conn: PgConnection) -> None:
        self._conn = conn
        self._rows: list[Any] | None = None
        self._rowcount = -1
        self._at = 0

    def answer(self, rows: list[Any], rowcount: int) -> None:
        self._rows, self._rowcount = rows, rowcount

    def _answered(self) -> list[Any]:
        if self._rows is None:
            self._conn.flush()
        if self._rows is None:  # the batch failed before it: raised where it was sent
            raise StoreUnavailable("a statement of a failed batch was read")
        return self._rows

    @property
    def rowcount(self) -> int:
        self._answered()
        return self._rowcount

    def fetchone(self) -> Any:
        rows = self._answered()
        if self._at >= len(rows):
            return None
        self._at += 1
        return rows[self._at - 1]

    def fetchall(self) -> list[Any]:
        rows = self._answered()
        rest, self._at = rows[self._at:], len(rows)
        return rest
