"""Red team 37: what names the store a notice is bound to (`AuditReads.notice_store`), as a
writer without the key who can run DDL as the brokers' role moves it under them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.broker.store.conftest import raw
from tests.broker.store.test_anchor_notices import _appends, _broker

# The audit table made again by the writer, with every row it held: the same chain, intact,
# under a new oid.
_REMADE = ("ALTER TABLE audit RENAME TO audit_was",
           "CREATE TABLE audit (LIKE audit_was INCLUDING ALL)",
           "INSERT INTO audit SELECT * FROM audit_was",
           "DROP TABLE audit_was")


def test_the_audit_table_made_again_before_a_peers_open_hides_none_of_its_cuts(
        pg_database: str, tmp_path: Path) -> None:
    """A writer without the key makes the audit table again (every row kept: the chain is
    intact) between two brokers' opens: the one opened after names the store by the new
    table's oid, the one before by the old. A cut of the later one's records from the
    chain's very end must still be found by the earlier."""
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    c = None
    try:
        _appends(b)
        links = a.chain_links()
        links.walk_anchored()
        top = a.last_seq()
        with raw(pg_database) as db:
            for statement in _REMADE:
                db.execute(statement, ())
        c = _broker(pg_database, tmp_path, "c")
        for _ in range(3):
            _appends(c)
        signed = dict(c.published_anchors())["c"].seq
        a.last_seq()  # (c's notices reach a)
        with raw(pg_database) as db:  # the cut: c's records and its row gone
            db.execute("DELETE FROM audit WHERE seq > ?", (top,))
            db.execute("DELETE FROM anchors WHERE signer='c'", ())
        links.walk_anchored()
        cut = links.data_break()
        assert cut is not None and top < cut <= signed
    finally:
        for store in (a, b, c):
            if store is not None:
                store.close()
