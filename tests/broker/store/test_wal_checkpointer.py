"""The WAL is copied back into the database by a thread of the writer's own
(`broker.store.wal_checkpointer`), not inside the commits the broker's processes wait for;
the writer's own automatic checkpoint is only the bound if that thread falls behind. The
thread lives exactly as long as the writer store; a read-only store has none."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from broker.store import sqlite as store_sqlite
from broker.store import wal_checkpointer
from broker.store.audit import AuditRecord, verify_chain
from broker.store.sqlite import SQLiteStore

MB = 1 << 20


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "libos-wal-checkpoint"]


def _write(store: SQLiteStore, megabytes: int) -> None:
    """`megabytes` of rows, a commit each, through the writer's own connection."""
    with store.transaction() as db:
        db.execute("CREATE TABLE IF NOT EXISTS bulk (b BLOB)")
    for _ in range(megabytes):
        with store.transaction() as db:
            db.executemany("INSERT INTO bulk (b) VALUES (?)", [(os.urandom(4096),)] * 256)


def _wal_size(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def test_the_writers_commits_leave_the_checkpoint_to_its_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the thread held still, 8 MB of commits (2,000 pages, past SQLite's default
    automatic checkpoint of 1,000) all stay in the WAL: no commit copied them back."""
    monkeypatch.setattr(wal_checkpointer, "EVERY", 3600.0)
    path = tmp_path / "s.db"
    store = SQLiteStore(path, audit_key=tmp_path / "k")
    try:
        _write(store, 8)
        assert _wal_size(path) > 8 * MB
        store.append_audit(AuditRecord(phase="admin", syscall="audit.anchor"))
    finally:
        store.close()
    # Closing checkpoints the whole log and removes it, as ever; nothing was lost.
    assert _wal_size(path) == 0
    again = SQLiteStore(path, audit_key=tmp_path / "k")
    try:
        rows = again._db.execute("SELECT COUNT(*) FROM bulk").fetchone()[0]
        _, problems = verify_chain(again.audit_records())
    finally:
        again.close()
    assert rows == 8 * 256 and problems == []


def test_the_thread_copies_the_log_back(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the commits left in the WAL reaches the database file while the store is open
    (no commit of the writer's crossed its own bound of `FALLBACK_PAGES`)."""
    monkeypatch.setattr(wal_checkpointer, "EVERY", 0.01)
    path = tmp_path / "s.db"
    store = SQLiteStore(path, audit_key=tmp_path / "k")
    try:
        _write(store, 8)
        deadline = time.monotonic() + 20  # (a loaded machine: the thread's turn comes late)
        while path.stat().st_size < 8 * MB and time.monotonic() < deadline:
            time.sleep(0.01)
        copied = path.stat().st_size
    finally:
        store.close()
    assert copied >= 8 * MB


def test_one_thread_per_writer_for_its_life(tmp_path: Path) -> None:
    before = len(_checkpointers())
    store = SQLiteStore(tmp_path / "s.db", audit_key=tmp_path / "k")
    try:
        assert len(_checkpointers()) == before + 1
        reader = SQLiteStore(tmp_path / "s.db", writer=False)
        try:
            assert len(_checkpointers()) == before + 1  # a read-only store checkpoints nothing
        finally:
            reader.close()
    finally:
        store.close()
    assert len(_checkpointers()) == before  # joined when its store closed


def test_a_thread_that_cannot_connect_leaves_the_checkpoints_to_the_commits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its connection refused: the store opens all the same, without the thread, and its
    commits checkpoint as SQLite does by default (1,000 pages), so the log stays bounded."""
    def refused(path: str, synchronous: str) -> None:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(store_sqlite, "WalCheckpointer", refused)
    before = len(_checkpointers())
    store = SQLiteStore(tmp_path / "s.db", audit_key=tmp_path / "k")
    try:
        assert len(_checkpointers()) == before
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    finally:
        store.close()


def test_a_thread_that_cannot_start_leaves_the_checkpoints_to_the_commits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread to be had (a process at its limit): the store opens all the same, its
    commits checkpointing, and the thread's connection is not left open (was: the store's
    open raised RuntimeError with its writer's lock and connection held, every later open
    of the file in the program a Conflict)."""
    def refused(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    path = tmp_path / "s.db"
    gc.disable()  # (the unstarted thread and its object hold each other: only a collection
    try:          # would close a connection left open)
        with monkeypatch.context() as limited:
            limited.setattr(wal_checkpointer.threading.Thread, "start", refused)
            store = SQLiteStore(path, audit_key=tmp_path / "k")
        try:
            assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
            store.append_audit(AuditRecord(phase="admin", syscall="audit.anchor"))
        finally:
            store.close()
        assert _open_descriptors(path) == 0
    finally:
        gc.enable()
    SQLiteStore(path, audit_key=tmp_path / "k").close()  # its lock let go


def _open_descriptors(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())


@pytest.mark.parametrize(("durability", "level"), [("off", 0), ("normal", 1), ("full", 2)])
def test_the_threads_checkpoints_sync_as_the_writers_commits_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durability: str, level: int) -> None:
    """A store opened with durability "off" (benchmarks) has checkpoints without fsyncs too
    (was: SQLite's default, FULL, on the thread's connection: 18 syncs where 5 remain in a
    run of 300 appends under strace)."""
    monkeypatch.setattr(wal_checkpointer, "EVERY", 3600.0)  # (its connection left idle)
    store = SQLiteStore(tmp_path / "s.db", audit_key=tmp_path / "k", durability=durability)
    try:
        assert store._checkpointer is not None
        assert store._checkpointer._db.execute("PRAGMA synchronous").fetchone()[0] == level
    finally:
        store.close()


def test_a_ctrl_c_while_the_thread_is_joined_still_lets_the_writer_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # (outside trio, a Ctrl-C lands wherever the main thread is: here, in the join)
    store = SQLiteStore(tmp_path / "s.db", audit_key=tmp_path / "k")
    stop = wal_checkpointer.WalCheckpointer.stop

    def interrupted(self: wal_checkpointer.WalCheckpointer) -> None:
        stop(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(wal_checkpointer.WalCheckpointer, "stop", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.close()
    monkeypatch.undo()
    again = SQLiteStore(tmp_path / "s.db", audit_key=tmp_path / "k")  # its lock was let go
    again.close()
