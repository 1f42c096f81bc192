"""The names a PostgreSQL store's SQL reads. Its session's search path is pinned (after the
migrations, and on each session made again): the catalog first, then the store's schema, its
own temporary objects last, so that no operator, function or type a writer put ahead of the
catalog's (`ALTER DATABASE ... SET search_path`) stands in for one in the brokers' SQL (their
`=` read another process's lease, and a broker took one held). And the checks a write
transaction has the server make (`libos_fence`: the lease of a fenced write; `libos_head_is`:
the chain's head a shared broker's append links to), as a broker calls them: by the schema
the store's tables are read from and with each parameter's own type, so that no function of
someone else's stands in for them. A writer
without the key (who can run DDL as the brokers' role) could otherwise add `libos_fence`
taking the types a batch's literals have (an integer, a numeric: the chain's takes them only
by casts, so theirs was chosen), or put a schema of their own with one of the same name ahead
in the search path; either let a lost lease write, or told a broker a head that is not, with
nothing said. (Inside, the functions name the catalog's operators and read their tables with
a search path of their own: migration 17.)"""

from __future__ import annotations

from collections.abc import Callable

from broker.errors import Conflict
from broker.store.chain import HeadMoved
from broker.store.connection import Db
from broker.store.leases import Lease, LeaseLost
from broker.store.pg_connection import PgConnection

# What a store's session sets itself (at the open, and on each session made again), whatever
# a writer set for the database's or the role's sessions (`ALTER DATABASE ... SET`): floats
# read back exactly (their negative `extra_float_digits` rounded a lease's expiry down: a held
# one was taken; red team 40), and each statement of a write transaction reads what is
# committed when it starts (their `repeatable read` had a transaction read the chain as it was
# before it waited for the write lock: a shared broker's append, on a head another had moved,
# refused for good as a duplicate and set aside; red team 44).
PINNED_SETTINGS = ("SET extra_float_digits = 3",
                   "SET default_transaction_isolation = 'read committed'")

# The SQLSTATEs the checks raise (migration 5).
FENCE_REFUSED = "LBL01"
HEAD_MOVED = "LBH01"

# The schema of the `audit` table this session reads (the store's), as an identifier (quoted
# where it must be).
_STORE_SCHEMA = ("SELECT relnamespace::pg_catalog.regnamespace::pg_catalog.text"
                 " FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=)"
                 " pg_catalog.to_regclass('audit')")


class ServerChecks:
    """The store's hooks for its write transactions' checks (`broker.store.leases`,
    `broker.store.chain`), made by the server."""

    _db: PgConnection
    _now: Callable[[], float]
    _fence_call = _head_call = _schema = ""

    def _find_checks(self) -> None:
        """Name the checks by the store's schema, and pin the session's search path to it;
        their errors typed. (After the migrations: they make what they make in the schema
        the session's path names first.)"""
        self._db.errors.update({FENCE_REFUSED: lambda message, _: LeaseLost(message),
                                HEAD_MOVED: HeadMoved})
        schema = self._db.execute(_STORE_SCHEMA).fetchone()[0]
        if "?" in schema:  # (a placeholder to the store's SQL: `pg_connection._format`)
            raise Conflict(f"the store's schema has a name libos cannot call it by: {schema!r}")
        self._schema = schema
        self._pin_search_path()
        self._fence_call = (f"SELECT {schema}.libos_fence(?::pg_catalog.int8,"
                            " ?::pg_catalog.int8, ?::pg_catalog.float8)")
        self._head_call = f"SELECT {schema}.libos_head_is(?::pg_catalog.int8, ?::pg_catalog.text)"

    def _pin_search_path(self) -> None:
        """The session reads the catalog's names first, then the store's, its own temporary
        ones last, whatever search path a writer set for the database's or the role's
        sessions (`ALTER DATABASE ... SET search_path`): no operator, function or type of
        theirs stands in for the catalog's in the store's SQL (again on each session made
        again, by the schema found at the open)."""
        self._db.execute("SELECT pg_catalog.set_config('search_path', ?, false)",
                         (f"pg_catalog, {self._schema}, pg_temp",))

    def _check_lease(self, db: Db, lease: Lease) -> None:
        db.execute(self._fence_call, (lease.pid, lease.token, self._now()))

    def _expect_head(self, db: Db, head: tuple[int, str]) -> bool:
        db.execute(self._head_call, head)
        return True
