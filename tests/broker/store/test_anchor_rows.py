"""The anchors table is anyone's to write who writes the database: a row with huge fields
costs a verifier (and every broker opening the store) only the bounded prefix it reads,
never the whole field; the genuine anchors beside it still verify."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from broker.store import AuditRecord
from broker.store.postgres import PostgresStore
from tests.broker.store.conftest import raw

HUGE = 40_000_000  # characters in each field of the forged row


def test_a_huge_anchor_row_is_read_bounded(pg_database: str, tmp_path: Path) -> None:
    store = PostgresStore(pg_database, broker="b1", anchor=tmp_path / "b1.anchor",
                          audit_key=tmp_path / "b1.key")
    try:
        store.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))
        store.sign_anchor()
        with raw(pg_database) as db:
            db.execute("INSERT INTO anchors(signer, seq, hash, key, signature, at) VALUES"
                       " ('forged', 1, repeat('h', ?), repeat('k', ?), repeat('x', ?), 0)",
                       (HUGE, HUGE, HUGE))
        tracemalloc.start()
        try:
            anchors = store.published_anchors()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1_000_000, peak  # not the forged row's 120 MB
        assert len(anchors) == 2 and all(len(name) <= 128 for name, _ in anchors)
        [genuine] = [signed for name, signed in anchors if name == "b1"]
        assert genuine.verifies() and genuine.seq == 2  # (after the open's audit.signed)
        count, problems = store.audit_problems()
        assert count == 2 and any("does not verify" in p for p in problems)
    finally:
        store.close()
