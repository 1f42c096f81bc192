"""Red team 27 on lane storeid's signed `audit.signed` marker (`libos ps` counts held rows
only on a chain with a marker a trusted key signed, `revived.held_ends`): its signature
covers only the record's seq and hash, and the walk took any row whose syscall column said
marker with such a signature. So a database writer without the key made `ps` say `held by
unsigned record N` of a process a single broker (no `--broker`) runs, on PostgreSQL:

- by setting the syscall column of one of that broker's own signed records (it signs once a
  writer's unsigned marker is in the chain) to the marker's;
- by copying a sharing broker's genuine signed marker from another database of this user
  in at the same seq.

A marker counts now only intact and linked in place (`recordsig.genuine_marker`); the
neighbour, a shared store's held row, still shows (`test_cli_ps_held_rt22.py`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Kernel
from broker.cli import main as cli_main
from broker.store.audit import AuditRecord
from broker.store.recordsig import MARKER
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head, fs_root
from tests.broker.store.conftest import raw
from tests.conftest import open_image

__all__ = ["fs_root"]
AUDIT = ("seq, ts, pid, inv, tool, phase, syscall, resource, args_hash, cap_id, detail, prev_hash,"
         " hash, payload, sig")


async def _single_broker_store(dsn: str, fs_root: Path) -> int:
    """A live process of a store one broker writes (no `--broker`), and a few more records."""
    async with Kernel.open(dsn, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        for _ in range(3):
            kernel.spawn("agent", caps=[PUB])
    return pid


def _forge_end_and_look(dsn: str, pid: int, capsys: pytest.CaptureFixture[str]) -> int | None:
    """The writer's unsigned end of `pid`, past the head; what `ps` says holds it."""
    append_past_head(dsn, AuditRecord(phase="admin", syscall="proc.end", pid=pid,
                                      detail={"state": "killed", "reason": "forged"}))
    assert cli_main(["ps", "--json", "--db", dsn]) == 0
    rows = {p["pid"]: p for p in json.loads(capsys.readouterr().out)}
    return rows[pid].get("held_by")


async def _runs(dsn: str, fs_root: Path, pid: int) -> None:
    async with Kernel.open(dsn, fs_root=fs_root) as kernel:  # (the broker runs it)
        assert kernel.process(pid).alive


async def test_a_signed_record_relabelled_a_marker_makes_nothing_held(
        pg_database: str, fs_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pid = await _single_broker_store(pg_database, fs_root)
    append_past_head(pg_database, AuditRecord(phase="admin", syscall=MARKER, pid=None,
                                              detail={"signed": ["proc.end"]}))
    async with Kernel.open(pg_database, fs_root=fs_root) as kernel:  # (signs from now on)
        kernel.spawn("agent", caps=[PUB])
    with raw(pg_database) as db:
        [signed] = db.execute("SELECT seq FROM audit WHERE sig IS NOT NULL AND syscall <> ?"
                              " ORDER BY seq LIMIT 1", (MARKER,)).fetchall()
        db.execute("UPDATE audit SET syscall = ? WHERE seq = ?", (MARKER, signed[0]))
    held = _forge_end_and_look(pg_database, pid, capsys)
    await _runs(pg_database, fs_root, pid)
    assert held is None


async def test_a_marker_copied_from_a_shared_database_makes_nothing_held(
        pg_database: str, pg_cluster: object, fs_root: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    shared = pg_cluster.create_database()  # type: ignore[attr-defined]
    async with Kernel.open(shared, fs_root=fs_root, broker="b") as kernel:
        await open_image(kernel)
    with raw(shared) as db:
        marker = tuple(db.execute(f"SELECT {AUDIT} FROM audit WHERE syscall = ? AND sig IS NOT"
                                  " NULL ORDER BY seq LIMIT 1", (MARKER,)).fetchone())
    pid = await _single_broker_store(pg_database, fs_root)
    with raw(pg_database) as db:  # (in place of this chain's record at that seq)
        assert db.execute("DELETE FROM audit WHERE seq = ?", (marker[0],)).rowcount == 1
        db.execute(f"INSERT INTO audit({AUDIT}) VALUES ({','.join('?' * len(marker))})",
                   marker)
    # (the broker refuses to load it too, the chain broken at the copy: not for an end)
    assert _forge_end_and_look(pg_database, pid, capsys) is None
