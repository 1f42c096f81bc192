"""Red team 15 on the names a database's memory goes by on this host (`location.beside`).

MEDIUM (an upgrade, then a database writer): the name became what libpq reaches (57fdd9a),
so a DSN naming no database, or taking its host, port or dbname from `PG*` variables, has a
new name. Its memory (anchors, the chain's marker, `verified`, its file root) stayed under
the old one, unseen: the first open after the upgrade was a broker new to the store, so a
chain a writer rewrote meanwhile (its marker row deleted) was taken unsigned, silently.
Now an address whose earlier name has a memory and whose own has none is refused
(`MemoryMoved`, a `Conflict`) until the operator moves it, or makes the new one to start
afresh.

LOW (the operator's DSNs): a dbname holding `?hostaddr=...` had the name of that dbname on
that server; '?' and '%' are now quoted in it (plain dbnames keep their names).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from broker import Kernel
from broker.errors import Conflict
from broker.store.location import beside, state_dir
from tests.broker.store.test_marked_names_redteam11 import (  # noqa: F401
    _no_pg_environment,  # (autouse: no PG* variable, a state dir of the test's own)
)
from tests.pg_cluster import Cluster


def _earlier(where: str) -> Path:
    """The directory an earlier libos kept `host:port/dbname`'s memory in."""
    return state_dir() / "databases" / hashlib.sha256(where.encode()).hexdigest()[:24]


def test_a_memory_kept_under_the_earlier_name_is_not_silently_left(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGDATABASE", "libos")
    (_earlier("localhost:5432/") / "brokers").mkdir(parents=True)
    with pytest.raises(Conflict, match="earlier libos") as refused:
        beside("postgresql:///", "brokers")
    assert type(refused.value).__name__ == "MemoryMoved" and "move it" in str(refused.value)
    # Moved by the operator: found again, whole.
    _earlier("localhost:5432/").rename(beside("postgresql:///libos", "brokers").parent)
    assert (beside("postgresql:///", "brokers")).is_dir()


def test_a_variable_that_now_names_the_server_finds_the_memory_moved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    (_earlier("localhost:5432/libos") / "anchor").mkdir(parents=True)
    monkeypatch.setenv("PGPORT", "5433")
    with pytest.raises(Conflict, match="earlier libos") as refused:
        beside("postgresql:///libos", "anchor")
    # (red team 18: the two addresses named, not only two hashed directories: this earlier
    # one is the memory of the database on 5432, still used, which a move would take away)
    assert "(localhost:5432/libos)" in str(refused.value)
    assert "(localhost:5433/libos)" in str(refused.value) and "leave it" in str(refused.value)
    # Another database's (the one on 5432 keeps that name): the operator starts afresh.
    beside("postgresql:///libos?port=5433", "anchor").parent.mkdir(parents=True)
    assert beside("postgresql:///libos", "anchor").parent.is_dir()
    monkeypatch.delenv("PGPORT")
    assert beside("postgresql:///libos", "anchor").parent == _earlier("localhost:5432/libos")


def test_a_plain_address_with_no_memory_yet_opens_as_before() -> None:
    assert not beside("postgresql://db.example/", "fs").parent.exists()


def test_a_dbname_holding_a_query_is_not_another_servers_name() -> None:
    assert beside("postgresql:///libos?hostaddr=10.0.0.5", "brokers") != beside(
        "postgresql:///libos%3Fhostaddr%3D10.0.0.5", "brokers")
    assert beside("postgresql:///a%25b", "brokers") != beside("postgresql:///a%2525b",
                                                              "brokers")


async def test_a_broker_opening_after_the_upgrade_is_refused_loudly(
        pg_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real shared open: its memory under the earlier name (as an older libos kept it,
    the address's dbname given by PGDATABASE) is refused, typed; moved, it opens."""
    dsn = pg_cluster.create_database()
    async with Kernel.open(dsn, fs_root=tmp_path / "fs", broker="b"):
        pass
    kept = beside(dsn, "brokers").parent
    silent, dbname = dsn.rsplit("/", 1)
    monkeypatch.setenv("PGDATABASE", dbname)
    earlier = _earlier(f"127.0.0.1:{pg_cluster.port}/")
    kept.rename(earlier)
    with pytest.raises(Conflict, match="earlier libos"):
        async with Kernel.open(silent + "/", fs_root=tmp_path / "fs", broker="b"):
            pass
    earlier.rename(kept)
    async with Kernel.open(silent + "/", fs_root=tmp_path / "fs", broker="b") as kernel:
        assert kernel.verify_audit()[1] == []
