"""Versioned schema migrations, on both backends: a new store is at the latest version of its
line, a store from a newer libos is refused untouched, an SQLite store from before versions
were numbered becomes version 1, and the two lines make the same tables and columns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker import Conflict
from broker.cli import main as cli
from broker.store.location import is_database
from broker.store.migrations import LINES, latest, migrations
from broker.store.opening import open_store
from tests.broker.store.conftest import raw


def _line(store_at: str | Path) -> str:
    return "postgres" if is_database(store_at) else "sqlite"


def test_each_line_is_numbered_from_one_and_both_say_the_same_versions() -> None:
    for line in LINES:
        assert [m.version for m in migrations(line)] == list(range(1, latest(line) + 1))
    assert [m.name for m in migrations("sqlite")] == [m.name for m in migrations("postgres")]


def test_a_new_store_is_at_the_latest_version(store_at: str | Path) -> None:
    open_store(store_at).close()
    with raw(store_at) as db:
        rows = db.execute("SELECT version, name FROM schema_migrations ORDER BY version"
                          ).fetchall()
    assert [tuple(r) for r in rows] == [(m.version, m.name) for m in migrations(_line(store_at))]
    open_store(store_at).close()  # opening again applies nothing
    with raw(store_at) as db:
        assert db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(rows)


def test_a_store_from_a_newer_libos_is_refused_untouched(
        store_at: str | Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(store_at)
    store.put_object("ns", "kept", "json", 1, pid=None, expect_version=None)
    store.close()
    newer = latest(_line(store_at)) + 1
    with raw(store_at) as db:
        db.execute("INSERT INTO schema_migrations(version, name, applied) VALUES (?,?,?)",
                   (newer, "from_the_future", 0.0))
    for writer in (True, False):
        with pytest.raises(Conflict, match=f"schema version {newer}, newer than this libos"):
            open_store(store_at, writer=writer)
    assert cli(["ps", "--db", str(store_at)]) == 2
    err = capsys.readouterr().err
    assert "newer than this libos" in err and "Traceback" not in err
    with raw(store_at) as db:
        assert db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == newer
        assert db.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 1


def test_an_sqlite_store_from_before_numbered_versions_becomes_version_1_then_latest(
        tmp_path: Path) -> None:
    """A store made by an older libos: no schema_migrations, an old `control` table without
    the columns added since, and rows that must survive."""
    db_path = tmp_path / "old.db"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE control (id INTEGER PRIMARY KEY, verb TEXT NOT NULL,"
                   " pid INTEGER, created REAL NOT NULL, done REAL)")
        db.execute("INSERT INTO control(verb, pid, created) VALUES ('pause', 1, 0)")
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema', '1')")
    store = open_store(db_path)
    try:
        # (kept, and answered: the store has no process 1)
        assert store.take_controls() == []
        assert store.control_result(1) == {"error": "NOT_FOUND",
                                           "message": "process 1 does not exist"}
        request = store.add_control("fork", 1, {"checkpoint": 3})
        store.finish_control(request, {"pid": 2})
        assert store.control_result(request) == {"pid": 2}
    finally:
        store.close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT version FROM schema_migrations").fetchall() == \
            [(m.version,) for m in migrations("sqlite")]


def _columns(store_at: str | Path) -> dict[str, set[str]]:
    with raw(store_at) as db:
        if is_database(store_at):
            rows = db.execute("SELECT table_name, column_name FROM information_schema.columns"
                              " WHERE table_schema='public'").fetchall()
            found: dict[str, set[str]] = {}
            for table, column in rows:
                found.setdefault(table, set()).add(column)
            return found
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: {r[1] for r in db.execute(f"PRAGMA table_info({t})")} for t in tables}


def test_both_lines_make_the_same_tables_and_columns(pg_database: str, tmp_path: Path) -> None:
    """The same code reads and writes both: PostgreSQL's only extra is the explicit `rowid`
    that SQLite has implicitly."""
    for target in (tmp_path / "s.db", pg_database):
        open_store(target).close()
    lite, pg = _columns(tmp_path / "s.db"), _columns(pg_database)
    assert set(lite) == set(pg)
    for table in lite:
        assert pg[table] - {"rowid"} == lite[table], table


def test_version_6_keeps_each_latest_checkpoint_in_the_log_and_drops_the_copy(
        store_at: str | Path) -> None:
    """A store at version 5 kept each process's latest checkpoint in `checkpoints` as well as
    in the log. Version 6 reads it from the log: a process with no row in the log (a store from
    before it) gets its checkpoint moved there, one with rows keeps the log's newest; then the
    copy's table is gone (a libos that read it refuses the store: a newer schema)."""
    store = open_store(store_at)
    store.save_checkpoint(7, 3, {"cwd": "/old"})
    store.save_checkpoint(7, 4, {"cwd": "/new"})
    store.close()
    with raw(store_at) as db:  # back to version 5, as that libos left it
        db.execute("DELETE FROM schema_migrations WHERE version>=6")
        db.execute("DROP INDEX control_pending")  # (version 7's)
        db.execute("DROP INDEX audit_vouching")  # (version 8's)
        db.execute("DROP INDEX audit_signed")  # (version 10's, and its column)
        db.execute("ALTER TABLE audit DROP COLUMN sig")
        db.execute("DROP INDEX audit_controls")  # (version 11's, and its column)
        db.execute("ALTER TABLE control DROP COLUMN sig")
        db.execute("DROP INDEX audit_answers")  # (version 12's, and its column)
        db.execute("ALTER TABLE approvals DROP COLUMN sig")
        db.execute("ALTER TABLE mailbox DROP COLUMN aside")  # (version 13's, and events')
        db.execute("ALTER TABLE raised_seen DROP COLUMN aside")
        db.execute("DROP INDEX audit_admin")  # (version 14's)
        db.execute("DROP INDEX audit_expired")  # (version 16's)
        db.execute("CREATE TABLE checkpoints (pid BIGINT PRIMARY KEY, step BIGINT NOT NULL,"
                   " state TEXT NOT NULL, created DOUBLE PRECISION NOT NULL)")
        db.execute("INSERT INTO checkpoints VALUES (7, 4, '{\"cwd\":\"/new\"}', 1.0)")
        db.execute("INSERT INTO checkpoints VALUES (9, 2, '{\"cwd\":\"/only\"}', 2.0)")
    store = open_store(store_at)
    try:
        latest = {pid: store.checkpoint(pid) for pid in (7, 9)}
        assert {pid: (c["step"], c["state"]) for pid, c in latest.items() if c} == {
            7: (4, {"cwd": "/new"}), 9: (2, {"cwd": "/only"})}
        assert [c["step"] for c in store.checkpoint_log(7)] == [3, 4]
        assert [c["id"] for c in store.checkpoint_log(9)] == [latest[9]["id"]]  # type: ignore[index]
    finally:
        store.close()
    assert "checkpoints" not in _columns(store_at)
