"""Red team 35 on red team 32's publish (`anchor_notices.PUBLISH`): it names pg_catalog's
`pg_notify`, but its notice text was made by an unqualified `concat_ws`. A database writer who
may create functions in a schema on the brokers' search path (`public`, as PostgreSQL's own
CVE-2018-1058 notes) defines `concat_ws(text, text, bigint, text, text, text)`: its exact
argument types win over pg_catalog's `concat_ws(text, VARIADIC "any")`, so every anchor b
publishes is told as the writer's text, noise to a, while the row is written as sent (no
`TELL`). The writer then cuts b's records and deletes b's row: a, told nothing, never read
the table, and the cut went unseen. The notice is now made by pg_catalog's function."""

from __future__ import annotations

from pathlib import Path

from broker.store import AuditRecord
from tests.broker.store.conftest import raw
from tests.broker.store.test_anchor_notices import _broker

SHADOW = ("CREATE FUNCTION public.concat_ws(text, text, bigint, text, text, text) RETURNS text"
          " LANGUAGE sql AS $$ SELECT 'noise' $$")


def test_a_writers_concat_ws_does_not_hide_the_cut(pg_database: str, tmp_path: Path) -> None:
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    try:
        links = a.chain_links()
        links.walk_anchored()
        top = a.last_seq()
        with raw(pg_database) as db:
            db.execute(SHADOW, ())
        b.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))
        b.sign_anchor()
        with raw(pg_database) as db:
            db.execute("DELETE FROM audit WHERE seq > ?", (top,))
            db.execute("DELETE FROM anchors WHERE signer='b'", ())
        links.walk_anchored()
        assert links.data_break() == top + 1
        assert "b" not in dict(a.published_anchors())  # (told by the notice alone)
    finally:
        a.close()
        b.close()
