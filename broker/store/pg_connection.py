"""A psycopg 3 connection in the shape the store's table modules use (sqlite3's): `execute`
with `?` placeholders returning a cursor whose rows are read by column name or position.

psycopg is imported lazily (by `connect`): it is the optional extra `postgres`, and nothing
of it is loaded by a user of SQLite. A connection that breaks mid-run (the server gone, the
network cut) is `StoreUnavailable`, a typed error, never a driver traceback; a store that
asks for it (many brokers sharing one) connects again on the next statement after that. A
value the server cannot hold (text with a NUL character, which SQLite keeps and PostgreSQL
refuses; an integer past 64 bits) is `InvalidArgument`, and the statement (its transaction)
writes nothing.

A write transaction is sent in pipeline mode (`batch`): its statements go to the server
without waiting for each answer, and the whole transaction costs one round trip when nothing
in it reads a result (a read, or a row count, waits for the answers so far). A statement that
failed is raised where its answer is read: at such a read, or at the end of the batch, after
the COMMIT was sent (which the server then refuses, so nothing is written). A check the
server makes (a fence, the chain's head) raises an error of its own SQLSTATE, which the store
maps to its typed error (`errors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any

from broker.errors import Conflict, InvalidArgument


class StoreUnavailable(Conflict):
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
        conn = psycopg.connect(dsn, autocommit=True, row_factory=_rows, connect_timeout=10,
                               application_name=name)
    except psycopg.ProgrammingError as exc:  # a DSN libpq cannot parse
        raise InvalidArgument(f"not a PostgreSQL address: {shown}: {exc}") from None
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot reach the store at {shown}: "
                               f"{str(exc).strip()[:300]}") from None
    return PgConnection(conn, shown, psycopg, dsn, name)


class PgConnection:
    def __init__(self, conn: Any, shown: str, psycopg: Any, dsn: str, name: str) -> None:
        self.raw = conn
        self._name = name
        self._shown = shown
        self._dsn = dsn
        # Set by a store that connects again after a connection broke (its session's locks
        # and settings made again); None: a broken connection stays broken.
        self.on_reconnect: Callable[[], None] | None = None
        # SQLSTATE -> the typed error (made from the server's message and detail) of a check
        # the server makes (set by the store).
        self.errors: dict[str, Callable[[str, str | None], Exception]] = {}
        self._psycopg = psycopg
        self._pipeline: Any = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.on_reconnect is not None and self.raw.closed:
            self._reconnect()
        with self.translated():
            if self._pipeline is not None:
                # Never a prepared statement in a batch: psycopg would count one as made
                # whose PREPARE an earlier error in the batch skipped (and then use it).
                return _Piped(self.raw.execute(_format(sql), tuple(params), prepare=False),
                              self)
            if params:
                return self.raw.execute(_format(sql), tuple(params))
            return self.raw.execute(sql)  # taken as written: it may hold several statements

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Statements sent without waiting for their answers (pipeline mode) until the block
        ends, then every answer read: an error among them is raised here (typed)."""
        if self.on_reconnect is not None and self.raw.closed:
            self._reconnect()
        with self.translated(), self.raw.pipeline() as pipeline:
            self._pipeline = pipeline
            try:
                yield
            except BaseException:
                # Read what is still to come now (the error that stopped the block may have
                # been raised before the server's answers were all in), so leaving the
                # pipeline has nothing left to report.
                with suppress(self._psycopg.Error):
                    pipeline.sync()
                raise
            finally:
                self._pipeline = None

    def sync(self) -> None:
        """Wait for the answers of what a batch has sent so far (typed errors)."""
        if self._pipeline is not None:
            with self.translated():
                self._pipeline.sync()

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
            raise

    def execute_script(self, sql: str) -> None:
        """Statements as written, with no parameters (a migration)."""
        self.execute(sql)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        rows = [tuple(p) for p in params]
        if not rows:
            return
        with self.translated():
            if self._pipeline is not None:  # one by one (psycopg's would prepare it)
                for row in rows:
                    self.raw.execute(_format(sql), row, prepare=False)
                return
            with self.raw.cursor() as cur:
                cur.executemany(_format(sql), rows)

    def close(self) -> None:
        self.on_reconnect = None
        self.raw.close()

    def _reconnect(self) -> None:
        """A new session in place of the broken one (StoreUnavailable if the server still
        cannot be reached); nothing of the old session's transaction survives."""
        fresh = connect(self._dsn, self._shown, self._name)
        self.raw = fresh.raw
        assert self.on_reconnect is not None
        self.on_reconnect()

    @staticmethod
    def _unstorable(exc: Exception) -> InvalidArgument:
        return InvalidArgument(f"the store cannot hold this value: {str(exc).strip()[:200]}")

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"lost the store at {self._shown}: {str(exc).strip()[:300]}")


class _Piped:
    """A cursor of a statement sent in a batch: reading it (rows, or the row count) waits for
    the answers so far."""

    __slots__ = ("_conn", "_cursor")

    def __init__(self, cursor: Any, conn: PgConnection) -> None:
        self._cursor = cursor
        self._conn = conn

    @property
    def rowcount(self) -> int:
        self._conn.sync()
        return int(self._cursor.rowcount)

    def fetchone(self) -> Any:
        with self._conn.translated():
            return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        with self._conn.translated():
            return list(self._cursor.fetchall())
