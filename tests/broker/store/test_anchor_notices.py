"""Shared mode: a broker takes the anchors its peers published since it last looked from the
notices the server brings with its queries (`broker/store/anchor_notices.py`), the anchor in
each: no query of its own, and an anchor told stays told though a writer deletes its row.
Its own anchors tell it nothing; a session made again, its first use, or a flood of notices
past what it keeps sends it to the `anchors` table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from broker.store import AuditRecord, signing
from broker.store.anchor import Signed
from broker.store.anchor_notices import CHANNEL, MAX_KEPT, AnchorNotices, Told
from broker.store.links import ChainLinks
from broker.store.postgres import PostgresStore
from tests.broker.store.conftest import raw


def _broker(pg_database: str, tmp_path: Path, name: str) -> PostgresStore:
    return PostgresStore(pg_database, broker=name, anchor=tmp_path / f"{name}.anchor",
                         audit_key=tmp_path / "key")


@contextmanager
def walked_pair(pg_database: str, tmp_path: Path
                ) -> Iterator[tuple[PostgresStore, PostgresStore, ChainLinks, int]]:
    """Brokers a and b, a's links walked once: (a, b, a's links, a's last seq then)."""
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    try:
        links = a.chain_links()
        links.walk_anchored()
        yield a, b, links, a.last_seq()
    finally:
        a.close()
        b.close()


def cut_is_found(pg_database: str, links: ChainLinks, top: int, signer: str,
                 signed: int) -> None:
    """A writer cuts the records past `top` (`signer`'s, up to its anchor's `signed`) and
    deletes its anchor row: the next walk finds the cut, past `top`, no later than `signed`."""
    with raw(pg_database) as db:
        db.execute("DELETE FROM audit WHERE seq > ?", (top,))
        db.execute("DELETE FROM anchors WHERE signer = ?", (signer,))
    links.walk_anchored()
    cut = links.data_break()
    assert cut is not None and top < cut <= signed


def a_later_peers_cut_is_found(
        pg_database: str, tmp_path: Path,
        between: Callable[[PostgresStore, PostgresStore, ChainLinks], None],
        peer_dsn: str | None = None, opened: Callable[[], None] | None = None) -> None:
    """Brokers a and b open (b appends, a walks); `between` (a writer's doing) runs; broker c
    opens (on `peer_dsn`: another role's address), `opened` runs, c appends and publishes and
    a is told: a cut of c's records from the chain's very end must be found by a."""
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    c = None
    try:
        _appends(b)
        links = a.chain_links()
        links.walk_anchored()
        top = a.last_seq()
        between(a, b, links)
        c = _broker(peer_dsn or pg_database, tmp_path, "c")
        if opened is not None:
            opened()
        for _ in range(3):
            _appends(c)
        signed = dict(c.published_anchors())["c"].seq
        a.last_seq()  # (c's notices reach a)
        cut_is_found(pg_database, links, top, "c", signed)
    finally:
        for store in (a, b, c):
            if store is not None:
                store.close()


def _appends(store: PostgresStore) -> None:
    store.append_audit(AuditRecord(phase="admin", syscall="caps.revoke"))
    store.sign_anchor()  # (published: an upsert of its row, and a notice)


def _published(store: PostgresStore, name: str) -> object:
    return dict(store.published_anchors())[name]


def _notice(store: PostgresStore, name: str) -> str:
    """The notice `store` sent of its newest anchor, as anyone listening read it (Ed25519
    signatures are deterministic: the same bytes)."""
    signed = dict(store.published_anchors())[name]
    assert store._key is not None
    bound = store._key.sign(signing.notice_message(
        store.notice_store(), name, signed.seq, signed.hash))
    return f"{name} {signed.seq} {signed.hash} {signed.key} {signed.signature} {bound}"


def _told(told: list[Told] | None, store: PostgresStore) -> list[Signed] | None:
    """The anchors told, each only if its notice was signed for `store`."""
    bound = store.notice_store()
    return None if told is None else [t.signed for t in told if t.holds(bound)]


def test_a_peers_published_anchor_is_told_and_nothing_else(
        pg_database: str, tmp_path: Path) -> None:
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    try:
        notices = AnchorNotices(a, "a")
        assert notices() is None  # (first use: the table is read)
        assert notices() == []
        _appends(a)  # its own: not a peer's
        a.last_seq()  # (any query brings the notices in)
        assert notices() == []
        _appends(b)
        a.last_seq()
        assert _told(notices(), a) == [_published(b, "b")] and notices() == []
        with raw(pg_database) as db:  # anyone's noise: not an anchor
            db.execute(f"SELECT pg_notify('{CHANNEL}', 'z x y')", ())
        a.last_seq()
        assert notices() == []
        a._db.raw.close()  # the session lost: made again, what came meanwhile unknown
        assert notices() is None and notices() == []
        _appends(b)
        a.last_seq()
        assert _told(notices(), a) == [_published(b, "b")]  # (listening again on the new session)
        with raw(pg_database) as db:  # a flood past what is kept: the table, instead
            db.execute(f"SELECT pg_notify('{CHANNEL}', concat_ws(' ', 'z', g, 'h', 'k', 's', 'n'))"
                       " FROM generate_series(1, ?) AS g", (MAX_KEPT + 1,))
        a.last_seq()
        assert notices() is None
    finally:
        a.close()
        b.close()


def test_a_cut_whose_notice_comes_with_the_walk_is_found_its_row_deleted(
        pg_database: str, tmp_path: Path) -> None:
    """The peer publishes after this broker's last query, and a writer cuts the peer's
    records from the chain's end and deletes its anchor's row: the check before the walk is
    told nothing (no query since), the walk's own query brings the notice in, and the anchor
    it carries is walked to and checked then."""
    with walked_pair(pg_database, tmp_path) as (_a, b, links, top):
        _appends(b)
        signed = dict(b.published_anchors())["b"].seq
        with raw(pg_database) as db:
            db.execute("DELETE FROM audit WHERE seq > ?", (top,))
            db.execute("DELETE FROM anchors WHERE signer='b'", ())
        assert links.data_break() is None
        links.walk_anchored()
        assert signed > top and links.data_break() == signed
