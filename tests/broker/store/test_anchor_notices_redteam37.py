"""Red team 37: what names the store a notice is bound to (`AuditReads.notice_store`), as a
writer without the key who can run DDL as the brokers' role moves it under them."""

from __future__ import annotations

import contextlib
from pathlib import Path

import psycopg
import pytest

from broker.store.links import ChainLinks
from broker.store.pg_connection import StoreUnavailable
from broker.store.postgres import PostgresStore
from tests.broker.store.conftest import raw
from tests.broker.store.test_anchor_notices import a_later_peers_cut_is_found
from tests.broker.store.test_anchor_notices_redteam36 import told_here_is_no_cut
from tests.pg_cluster import Cluster

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
    def between(a: PostgresStore, b: PostgresStore, links: ChainLinks) -> None:
        with raw(pg_database) as db:
            for statement in _REMADE:
                db.execute(statement, ())

    a_later_peers_cut_is_found(pg_database, tmp_path, between)


@pytest.mark.xfail(strict=True, reason=(
    "not closed: the store's name holds the cluster's system identifier only where the "
    "broker's role may read it ('' else), so peers of roles that differ in that privilege "
    "name it apart and each one's notices are noise to the other (DESIGN §9)"))
def test_a_peer_of_a_role_that_may_not_read_the_cluster_is_still_heard(
        pg_database: str, tmp_path: Path) -> None:
    """Two brokers of one store, of roles that differ in one privilege: one may call
    `pg_control_system` (a superuser, or `pg_monitor`), the other not (EXECUTE revoked from
    PUBLIC). A cut of the second's records from the chain's very end must still be found by
    the first."""
    with raw(pg_database) as db:
        db.execute("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC", ())
        db.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lesser')"
                   " THEN CREATE ROLE lesser LOGIN; END IF; END $$", ())
    lesser = pg_database.replace("://libos@", "://lesser@")
    def between(a: PostgresStore, b: PostgresStore, links: ChainLinks) -> None:
        with raw(pg_database) as db:  # (the store made: its tables the other role's too)
            db.execute("GRANT ALL ON ALL TABLES IN SCHEMA public TO lesser", ())
            db.execute("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO lesser", ())

    a_later_peers_cut_is_found(pg_database, tmp_path, between, peer_dsn=lesser)


def _lesser(dsn: str) -> str:
    """`dsn`'s database made the store of a role that may not call `pg_control_system`
    (EXECUTE revoked from PUBLIC there); the address as that role."""
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC")
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                     "'lesser') THEN CREATE ROLE lesser LOGIN; END IF; END $$")
        conn.execute(f"ALTER DATABASE {name} OWNER TO lesser")
        conn.execute("ALTER SCHEMA public OWNER TO lesser")
    return dsn.replace("://libos@", "://lesser@")


@pytest.mark.xfail(strict=True, reason=(
    "not closed: where the brokers' role may not read the cluster's system identifier, the "
    "store is named by its database's oid alone, and a database of another cluster can have "
    "the same (the first made in a fresh cluster, or `CREATE DATABASE ... OID`): its "
    "brokers' genuine notices, told here, read as a cut (DESIGN §9)"))
def test_a_notice_of_another_clusters_database_of_the_same_oid_is_no_cut(
        pg_database: str, tmp_path: Path) -> None:
    """Two clusters, each with a store whose brokers' role may not read the cluster's
    identifier, their databases of one oid: the other's brokers' genuine notices (the same
    key), read there by anyone who can connect and told here, must not read as a cut."""
    here = _lesser(pg_database)
    with psycopg.connect(pg_database) as conn:
        oid = conn.execute("SELECT oid FROM pg_database WHERE datname = "
                           "current_database()").fetchone()[0]
    cluster = Cluster()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE same OID = {oid} TEMPLATE template0")
        told_here_is_no_cut(pg_database, here, _lesser(cluster.dsn("same")), tmp_path)
    finally:
        cluster.stop()


def test_the_database_made_again_under_open_brokers_hides_none_of_their_cuts(
        pg_cluster: Cluster, pg_database: str, tmp_path: Path) -> None:
    """A writer without the key who may make databases ends the brokers' sessions and makes
    the store's database again under its name (every row kept: `CREATE DATABASE ...
    TEMPLATE`, the old one dropped, the copy renamed): each broker connects again, to the
    new database. A cut of the records of a broker opened after must still be found by
    one opened before."""
    def between(a: PostgresStore, b: PostgresStore, links: ChainLinks) -> None:
        name = pg_database.rsplit("/", 1)[1]
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         f" WHERE datname = '{name}'")
            conn.execute(f"CREATE DATABASE {name}_again TEMPLATE {name}")
            conn.execute(f"DROP DATABASE {name}")
            conn.execute(f"ALTER DATABASE {name}_again RENAME TO {name}")
        for store in (a, b):  # (each connects again: to the database made again)
            with contextlib.suppress(StoreUnavailable):
                store.last_seq()
            store.last_seq()
        links.walk_anchored()  # (a listens again: a session lost is told nothing, DESIGN §9)

    a_later_peers_cut_is_found(pg_database, tmp_path, between)


def test_an_operator_shadowing_the_catalogs_hides_none_of_a_later_peers_cuts(
        pg_database: str, tmp_path: Path) -> None:
    """A writer without the key makes an `=` of its own over names, first in the search path
    of the sessions opened after (`ALTER DATABASE ... SET search_path`, pg_catalog put
    after it): the database the store is named by must not be another for a broker opened
    after than for one opened before. A cut of the later one's records must be found."""
    def between(a: PostgresStore, b: PostgresStore, links: ChainLinks) -> None:
        name = pg_database.rsplit("/", 1)[1]
        with raw(pg_database) as db:
            db.execute("CREATE FUNCTION public.same(name, name) RETURNS boolean"
                       " LANGUAGE sql IMMUTABLE AS 'SELECT true'", ())
            db.execute("CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = name,"
                       " FUNCTION = public.same)", ())
            db.execute(f"ALTER DATABASE {name} SET search_path = public, pg_catalog", ())

    a_later_peers_cut_is_found(pg_database, tmp_path, between)
