"""Red team 38: the name a notice's store is bound to (`AuditReads.notice_store`), attacked
by a writer without the key through the search path of the sessions opened after."""

from __future__ import annotations

from pathlib import Path

from broker.store.audit_reads import AuditReads
from tests.broker.store.conftest import raw
from tests.broker.store.test_anchor_notices import _appends, _broker


def test_a_type_shadowing_the_catalogs_text_names_no_store_alike(
        pg_database: str, tmp_path: Path) -> None:
    """A writer without the key makes a type `text` of its own, with casts to it from oid and
    bigint that give '1' whatever they are given, first in the search path of the sessions
    opened after (`ALTER DATABASE ... SET search_path`, pg_catalog after it): `::text` in the
    queries that name the store meant the writer's, and a session opened after named it
    "1 1" (every store so attacked alike; one opened before named it by the cluster and the
    database: their notices noise to each other). The names are cast to pg_catalog's text.
    A broker opened after appends too: the chain's own checks name pg_catalog's `text` and
    run with a search path of their own (migration 17; before it the writer's type broke
    them, a typed error: a denial of service, loud)."""
    a = _broker(pg_database, tmp_path, "a")
    try:
        before = a.notice_store()
        name = pg_database.rsplit("/", 1)[1]
        with raw(pg_database) as db:
            db.execute("CREATE TYPE public.text AS ENUM ('1')", ())
            for source in ("pg_catalog.oid", "pg_catalog.int8"):
                db.execute(f"CREATE FUNCTION public.one({source}) RETURNS public.text"
                           " LANGUAGE sql IMMUTABLE AS $$SELECT '1'::public.text$$", ())
                db.execute(f"CREATE CAST ({source} AS public.text)"
                           f" WITH FUNCTION public.one({source})", ())
            db.execute(f"ALTER DATABASE {name} SET search_path = public, pg_catalog", ())
        with raw(pg_database) as later:  # a session opened after
            assert AuditReads._named(lambda sql: later.execute(sql, ()).fetchall()) == before
        c = _broker(pg_database, tmp_path, "c")
        try:
            _appends(c)
        finally:
            c.close()
        _appends(a)  # the neighbour, opened before, writes on
    finally:
        a.close()
