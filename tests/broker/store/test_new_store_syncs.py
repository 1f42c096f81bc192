"""A new SQLite store is made without waiting on the disk at durability "normal" (issue #17:
switching an empty file to WAL and creating the schema cost six fdatasyncs, up to 25 ms of a
cold start on a busy disk), and with every sync at "full". What the new store holds is still
synced when it closes (its last checkpoint), and a store that exists opens as before.

The syncs are seen as they happen: the opening runs in a child under `strace` (skipped where
there is none, or where it may not trace)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STRACE = shutil.which("strace")
pytestmark = pytest.mark.skipif(STRACE is None, reason="no strace here")

# The child: open (make) a store, say so, append a record, close, say so.
CHILD = textwrap.dedent("""
    import os, sys
    from broker.store.audit import AuditRecord
    from broker.store.sqlite import SQLiteStore
    path, key, durability = sys.argv[1:4]
    store = SQLiteStore(path, audit_key=key, durability=durability)
    os.write(2, b"OPENED\\n")
    store.append_audit(AuditRecord(phase="admin", syscall="audit.anchor"))
    store.close()
    os.write(2, b"CLOSED\\n")
""")


def _syncs(tmp_path: Path, name: str, durability: str) -> tuple[list[str], list[str]]:
    """The files of the store `name` synced while it opened, and while it was used and closed."""
    trace = tmp_path / f"{name}.trace"
    done = subprocess.run(
        [STRACE, "-f", "-y", "-qq", "-e", "trace=fsync,fdatasync,write", "-o", str(trace),
         sys.executable, "-c", CHILD, str(tmp_path / name), str(tmp_path / "key"), durability],
        capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[3])
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace may not trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr
    opening: list[str] = []
    after: list[str] = []
    into = opening
    for line in trace.read_text().splitlines():
        if "OPENED" in line:
            into = after
        synced = re.search(r"(?:fsync|fdatasync)\(\d+<([^>]*)>", line)
        if synced and synced[1].startswith(str(tmp_path)) and "key" not in synced[1]:
            into.append(os.path.basename(synced[1]) or synced[1])
    assert any("CLOSED" in line for line in trace.read_text().splitlines())
    return opening, after


def test_a_new_store_is_made_without_a_sync_and_synced_when_it_closes(tmp_path: Path) -> None:
    opening, after = _syncs(tmp_path, "s.db", "normal")
    assert opening == []
    # Its last checkpoint makes the log, then the file, durable: nothing of it stays unsynced.
    assert "s.db-wal" in after and "s.db" in after


def test_at_full_durability_a_new_store_is_synced_as_it_is_made(tmp_path: Path) -> None:
    opening, _ = _syncs(tmp_path, "s.db", "full")
    assert "s.db" in opening and "s.db-wal" in opening


def test_an_existing_store_reopens_with_its_records(tmp_path: Path) -> None:
    _syncs(tmp_path, "s.db", "normal")
    _syncs(tmp_path, "s.db", "normal")  # opened again (not made): appends a second record
    from broker.store.audit import verify_chain
    from broker.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db", audit_key=tmp_path / "key")
    try:
        records = list(store.audit_records())
        assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()
    assert sum(r.record.syscall == "audit.anchor" for r in records) >= 2
    assert verify_chain(records)[1] == []
