"""Red team 11 on the name a shared broker's memory of a database goes by on its host
(`location.beside`, used by `broker.store.marked`, the anchors and `verified`, and by a
database's file root): it was the database's `host:port/dbname` as the DSN spells them,
hashed.

LOW (the operator's DSNs, not the database writer's choice): two different databases could
share the name. A DSN without a dbname connects to the database named after its user, but
both read as `host:5432/`; so did DSNs naming the server only by `hostaddr` (read as
`localhost`) and those taking everything from a `service`. A broker opening both kept one
memory for two chains: the second was noted moved at every open, and its records vouched
unsigned below the first's marker seq (a chain rewritten there passed). Now the name is
what libpq reaches (`location.database_name`): the user's database where none is named,
`hostaddr` and `service` where given, `PG*` variables where the DSN is silent. Every name a
plain `host:port/dbname` DSN had before is kept (else an upgrade loses its memory).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import psycopg
import pytest

from broker import Kernel
from broker.store.location import beside, state_dir
from broker.store.recordsig import UNSIGNED
from tests.pg_cluster import Cluster

PG_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")


@pytest.fixture(autouse=True)
def _no_pg_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # (a state dir of its own: an earlier name's memory there is refused, `MemoryMoved`)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for variable in PG_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def _name(dsn: str) -> str:
    return beside(dsn, "brokers").parent.name


def test_two_databases_named_by_their_users_do_not_share_a_memory() -> None:
    assert beside("postgresql://alice@db.example/", "brokers") != beside(
        "postgresql://bob@db.example/", "brokers")


def test_a_server_named_by_its_address_is_not_localhost() -> None:
    assert beside("postgresql:///libos?hostaddr=10.0.0.5", "brokers") != beside(
        "postgresql://localhost/libos", "brokers")
    assert _name("postgresql:///libos?hostaddr=10.0.0.5") != _name(
        "postgresql:///libos?hostaddr=10.0.0.6")


def test_two_services_do_not_share_a_memory() -> None:
    assert beside("postgresql:///?service=a", "brokers") != beside(
        "postgresql:///?service=b", "brokers")


def test_a_server_named_by_the_environment_is_not_localhost(
        monkeypatch: pytest.MonkeyPatch) -> None:
    here = _name("postgresql:///libos")
    monkeypatch.setenv("PGHOST", "db.example")
    assert _name("postgresql:///libos") == _name("postgresql://db.example/libos") != here
    # (a host the DSN gives wins over the variable, as in libpq)
    assert _name("postgresql://localhost/libos") == here


def test_the_same_database_named_two_ways_by_its_user_keeps_one_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _name("postgresql://alice@db.example/") == _name("postgresql://db.example/alice")
    monkeypatch.setenv("PGUSER", "alice")
    assert _name("postgresql://db.example/") == _name("postgresql://db.example:5432/alice")


# Each as the names were made before (`host or localhost:port or 5432/dbname`, hashed): the
# memory, anchors and file root an upgrade must find again.
EARLIER = {
    "postgresql://db.example:5433/libos": "a59bd21f4f677ad7fecff465",
    "postgresql://alice:pw@db.example/libos": "a2cfbc265fd179ac8253250f",
    "postgres://127.0.0.1:5432/chain?sslmode=require": "3db29ebfc396e3fb31928456",
    "postgresql://%2Fvar%2Frun%2Fpostgresql/libos": "2a45692e518d9cc956a3ae3a",
    "postgresql:///libos": "186bd2aa8bfa4c304f390138",
}


@pytest.mark.parametrize("dsn", sorted(EARLIER))
def test_a_plain_address_keeps_the_name_it_had(dsn: str) -> None:
    assert _name(dsn) == EARLIER[dsn]


def test_the_name_is_a_plain_file_name_under_the_state_dir() -> None:
    for dsn in ("postgresql://h/..%2F..%2Fetc", "postgresql:///?service=..%2F..",
                "postgresql://%2E%2E/x?hostaddr=..%2F"):
        place = beside(dsn, "anchor")
        assert place.parent.parent == state_dir() / "databases"
        assert re.fullmatch(r"[0-9a-f]{24}", place.parent.name), place


def _users_database(cluster: Cluster, who: str) -> str:
    """A role of its own and the database named after it, addressed without a dbname."""
    role = f"{who}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"CREATE DATABASE {role} OWNER {role} TEMPLATE template0")
    return f"postgresql://{role}@127.0.0.1:{cluster.port}/"


async def test_one_broker_keeps_two_users_databases_apart(
        pg_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    alice, bob = (_users_database(pg_cluster, who) for who in ("alice", "bob"))
    for dsn in (alice, bob, alice):  # (again: neither open disturbed the other's memory)
        async with Kernel.open(dsn, fs_root=tmp_path / "fs", broker="b") as kernel:
            assert [r["detail"] for r in kernel.audit() if r["syscall"] == UNSIGNED] == []
            assert kernel.verify_audit()[1] == []
    # The neighbour: alice's database named with its dbname is the same memory (no note).
    async with Kernel.open(alice + alice.rsplit("@", 1)[0].removeprefix("postgresql://"),
                           fs_root=tmp_path / "fs", broker="b") as kernel:
        assert [r["detail"] for r in kernel.audit() if r["syscall"] == UNSIGNED] == []
    assert len(list((tmp_path / "state" / "libos" / "databases").iterdir())) == 2
