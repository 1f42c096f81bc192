"""The checks a PostgreSQL store's write transaction has the server make (`libos_fence`: the
lease of a fenced write; `libos_head_is`: the chain's head a shared broker's append links to),
as a broker calls them: by the schema the store's tables are read from and with each
parameter's own type, so that no function of someone else's stands in for them. A writer
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
    _fence_call = _head_call = ""

    def _find_checks(self) -> None:
        """Name the checks by the store's schema; their errors typed (after the migrations)."""
        self._db.errors.update({FENCE_REFUSED: lambda message, _: LeaseLost(message),
                                HEAD_MOVED: HeadMoved})
        schema = self._db.execute(_STORE_SCHEMA).fetchone()[0]
        if "?" in schema:  # (a placeholder to the store's SQL: `pg_connection._format`)
            raise Conflict(f"the store's schema has a name libos cannot call it by: {schema!r}")
        self._fence_call = (f"SELECT {schema}.libos_fence(?::pg_catalog.int8,"
                            " ?::pg_catalog.int8, ?::pg_catalog.float8)")
        self._head_call = f"SELECT {schema}.libos_head_is(?::pg_catalog.int8, ?::pg_catalog.text)"

    def _check_lease(self, db: Db, lease: Lease) -> None:
        db.execute(self._fence_call, (lease.pid, lease.token, self._now()))

    def _expect_head(self, db: Db, head: tuple[int, str]) -> bool:
        db.execute(self._head_call, head)
        return True
