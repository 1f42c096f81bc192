"""Red team 36: an anchor notice is bound to the store it was signed for (`signing.
notice_message`, `anchor_notices.Told`); attacks on what that binding names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg

from broker.store.anchor_notices import CHANNEL
from broker.store.links import ChainLinks
from broker.store.postgres import PostgresStore
from tests.broker.store.conftest import raw
from tests.broker.store.test_anchor_notices import _appends, _broker, a_later_peers_cut_is_found


def _heard(dsn: str, then: Any) -> list[str]:
    """The anchor notices a listener on `dsn` (anyone who can connect) read while `then` ran."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        then()
        conn.execute("SELECT 1")
        return [n.payload for n in conn.notifies(timeout=0.5)]


def told_here_is_no_cut(pg_database: str, here: str, there: str, tmp_path: Path) -> None:
    """Broker a on `here` (the store `pg_database`, as some role), broker b on `there`
    (another store, the same key): b's genuine notices, heard by anyone who can connect and
    told here, make no cut in a's walk."""
    a = _broker(here, tmp_path, "a")
    b = PostgresStore(there, broker="b", anchor=tmp_path / "there-b.anchor",
                      audit_key=tmp_path / "key")
    try:
        links = a.chain_links()
        links.walk_anchored()
        assert links.data_break() is None
        heard = _heard(there, lambda: [_appends(b) for _ in range(3)])
        assert heard
        with raw(pg_database) as db:  # told here, by anyone who can connect
            for payload in heard:
                db.execute(f"SELECT pg_notify('{CHANNEL}', ?)", (payload,))
        links.walk_anchored()
        assert links.data_break() is None
    finally:
        a.close()
        b.close()


def test_a_notice_of_a_copy_of_this_store_is_no_cut(
        pg_cluster: Any, pg_database: str, tmp_path: Path) -> None:
    """A copy of a store (`CREATE DATABASE ... TEMPLATE`, a dump restored under another name)
    starts with the same first record: its brokers' notices, read there by anyone who can
    connect and told here, must not read as a cut of this store."""
    a, b = _broker(pg_database, tmp_path, "a"), _broker(pg_database, tmp_path, "b")
    _appends(a)
    _appends(b)
    a.close()
    b.close()
    name = pg_database.rsplit("/", 1)[1]
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}_copy TEMPLATE {name}")
    told_here_is_no_cut(pg_database, pg_database, pg_cluster.dsn(f"{name}_copy"), tmp_path)


def test_a_first_record_moved_before_a_peers_open_hides_none_of_its_cuts(
        pg_database: str, tmp_path: Path) -> None:
    """A writer without the key takes the chain's first row away while a broker opens, and
    puts it back: that broker's walk starts at the second record, so its notices are bound
    to another "first record" than the one the brokers open before it walked. A cut of its
    records from the chain's very end must still be found by them."""
    def between(a: PostgresStore, b: PostgresStore, links: ChainLinks) -> None:
        with raw(pg_database) as db:
            db.execute("CREATE TABLE kept AS SELECT * FROM audit WHERE seq=1", ())
            db.execute("DELETE FROM audit WHERE seq=1", ())

    def opened() -> None:  # (its open walks from seq 2)
        with raw(pg_database) as db:
            db.execute("INSERT INTO audit SELECT * FROM kept", ())

    a_later_peers_cut_is_found(pg_database, tmp_path, between, opened=opened)
