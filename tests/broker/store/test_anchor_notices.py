"""Shared mode: a broker reads the peers' published anchors before a data walk only when one
was published since (`broker/store/anchor_notices.py`): told by the notice each upsert sends,
which arrives with the broker's next query, no round trip of its own. Its own upserts tell it
nothing; a session made again (its notices lost meanwhile) counts as one."""

from __future__ import annotations

from pathlib import Path

from broker.store import AuditRecord
from broker.store.anchor_notices import AnchorNotices
from broker.store.postgres import PostgresStore
from tests.broker.store.conftest import raw


def _broker(pg_database: str, tmp_path: Path, name: str) -> PostgresStore:
    return PostgresStore(pg_database, broker=name, anchor=tmp_path / f"{name}.anchor",
                         audit_key=tmp_path / "key")


def _appends(store: PostgresStore) -> None:
    store.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))
    store.sign_anchor()  # (published: an upsert of its row, and a notice)


def test_a_peers_published_anchor_is_noticed_and_nothing_else(
        pg_database: str, tmp_path: Path) -> None:
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    try:
        notices = AnchorNotices(a, "a")
        assert notices()  # (first use: nothing known yet)
        assert not notices()
        _appends(a)  # its own: not a peer's
        a.last_seq()  # (any query brings the notices in)
        assert not notices()
        _appends(b)
        a.last_seq()
        assert notices() and not notices()
        a._db.raw.close()  # the session lost: made again, what came meanwhile unknown
        assert notices() and not notices()
        _appends(b)
        a.last_seq()
        assert notices()  # (listening again on the new session)
    finally:
        a.close()
        b.close()


def test_a_cut_whose_notice_comes_with_the_walk_is_found(
        pg_database: str, tmp_path: Path) -> None:
    """The peer publishes after this broker's last query, and a writer cuts the peer's
    records from the chain's end: the check before the walk sees no notice (none read yet),
    the walk's own query brings it in, and the anchors are read and walked again then."""
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    try:
        links = a.chain_links()
        links.walk_anchored()
        top = a.last_seq()
        _appends(b)
        [(signed,)] = [(s.seq,) for name, s in b.published_anchors() if name == "b"]
        with raw(pg_database) as db:
            db.execute("DELETE FROM audit WHERE seq > ?", (top,))
        assert links.data_break() is None
        links.walk_anchored()
        assert links.data_break() == signed > top
    finally:
        a.close()
        b.close()
