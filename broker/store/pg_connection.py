"""A psycopg 3 connection in the shape the store's table modules use (sqlite3's): `execute`
with `?` placeholders returning a cursor whose rows are read by column name or position.

psycopg is imported lazily (by `connect`): it is the optional extra `postgres`, and nothing
of it is loaded by a user of SQLite. A connection that breaks mid-run (the server gone, the
network cut) is `StoreUnavailable`, a typed error, never a driver traceback; a store that
asks for it (many brokers sharing one) connects again on the next statement after that. A
value the server cannot hold (text with a NUL character, which SQLite keeps and PostgreSQL
refuses; an integer past 64 bits) is `InvalidArgument`, and the statement (its transaction)
writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        self._lost = (psycopg.OperationalError, psycopg.InterfaceError)
        self._refused = psycopg.DataError

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.on_reconnect is not None and self.raw.closed:
            self._reconnect()
        try:
            if params:
                return self.raw.execute(_format(sql), tuple(params))
            return self.raw.execute(sql)  # taken as written: it may hold several statements
        except self._lost as exc:
            raise self._unavailable(exc) from None
        except self._refused as exc:
            raise self._unstorable(exc) from None

    def execute_script(self, sql: str) -> None:
        """Statements as written, with no parameters (a migration)."""
        self.execute(sql)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        rows = [tuple(p) for p in params]
        if not rows:
            return
        try:
            with self.raw.cursor() as cur:
                cur.executemany(_format(sql), rows)
        except self._lost as exc:
            raise self._unavailable(exc) from None
        except self._refused as exc:
            raise self._unstorable(exc) from None

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
