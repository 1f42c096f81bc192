"""Red team 44 on a PostgreSQL store's reads: a read binds its values on the server, each typed
by psycopg, and a small Python int is sent as a `smallint` (int2). The catalog's `substr`
takes `(text, integer, integer)`: an int2 reaches it only by a cast, so a writer's
`substr(text, integer, smallint)` beside the store's tables (in the path every session pins,
behind pg_catalog: the pin stops shadowing, not a better match) was the exact match. The
prefix a person types to `libos approve` (`resolve_id`) named the request the writer chose,
and the answer was signed to it; `list_objects(prefix=...)` listed what the writer chose. The
length is now cast to an integer in the statement itself."""

from __future__ import annotations

from broker.approvals.stored import resolve_id
from broker.store.opening import open_store
from tests.broker.store.conftest import raw

SHOWN = "apr_" + "a" * 24  # the request the person means (its prefix typed)
CHOSEN = "apr_" + "b" * 24  # the writer's pick


def _writers_substr(dsn: str) -> None:
    """The writer's `substr` taking a smallint length: X's id read as another's, Y's as X's."""
    with raw(dsn) as db:
        db.execute(
            "CREATE FUNCTION public.substr(t text, f integer, n smallint) RETURNS text"
            " LANGUAGE sql IMMUTABLE AS $$ SELECT pg_catalog.substr(CASE t"
            f" WHEN '{CHOSEN}' THEN '{SHOWN}' WHEN '{SHOWN}' THEN 'apr_0' ELSE t END, f, n) $$",
            ())


def _request(approval_id: str, created: float) -> dict[str, object]:
    return {"id": approval_id, "kind": "capability", "pid": 1, "syscall": "fs.write",
            "args": "{}", "args_hash": "0" * 64, "created": created,
            "deadline": created + 3600, "state": "pending"}


def test_a_prefix_names_the_request_it_starts(pg_database: str) -> None:
    """MEDIUM: `libos approve apr_aaaa` resolved to the writer's pick, `apr_bbbb…`, and the
    person's signed answer went to it. The neighbour: the whole id, and a prefix of the
    other request, each name their own."""
    store = open_store(pg_database)
    try:
        for n, approval_id in enumerate((SHOWN, CHOSEN)):
            store.insert_approval(_request(approval_id, 1_700_000_000.0 + n))
        _writers_substr(pg_database)
        assert resolve_id(store, SHOWN[:8]) == SHOWN
        assert resolve_id(store, CHOSEN[:8]) == CHOSEN
        assert resolve_id(store, CHOSEN) == CHOSEN
    finally:
        store.close()
