"""Red team 22 on lane heldbits' `libos ps` held rows (`revived.held_ends`): a database
writer without the key appends an `audit.signed` marker and an unsigned end of a live
process to a single writer's SQLite store (no broker shared it: nothing is ever held there).
The broker runs the process (the end is past the signed anchor: it counts for nothing), but
`ps` walked the chain as brokers sharing it would and said `held by unsigned record N, not
run`: one forged row made the host's view false. The same on a PostgreSQL store a single
broker writes (no `--broker`), where a reader cannot tell the modes apart by the backend, is
fixed (lane storeid): a sharing broker signs its marker, and `ps` takes a chain for a shared
one only with a marker signed by a key it trusts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Kernel
from broker.cli import main as cli_main
from broker.store.audit import AuditRecord
from broker.store.keys import AuditKey
from broker.store.recordsig import MARKER
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head, fs_root
from tests.broker.kernel.test_held_redteam11 import _forge_end, _parent_and_child
from tests.broker.store.conftest import raw
from tests.conftest import open_image

__all__ = ["fs_root"]


async def test_a_forged_marker_does_not_make_ps_show_a_single_writers_process_held(
        db_path: Path, fs_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
    append_past_head(db_path, AuditRecord(phase="admin", syscall=MARKER, pid=None,
                                          detail={"signed": ["proc.end"]}))
    forged = append_past_head(db_path, AuditRecord(
        phase="admin", syscall="proc.end", pid=pid,
        detail={"state": "killed", "reason": "forged"}))
    assert cli_main(["ps", "--json", "--db", str(db_path)]) == 0
    rows = {p["pid"]: p for p in json.loads(capsys.readouterr().out)}
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:  # (the broker runs it)
        assert kernel.process(pid).alive
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    assert rows[pid].get("held_by") is None, (forged, rows[pid])


async def test_a_forged_marker_on_a_single_writers_postgres_store_shows_held(
        pg_database: str, fs_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(pg_database, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
    marker = append_past_head(pg_database, AuditRecord(phase="admin", syscall=MARKER, pid=None,
                                                       detail={"signed": ["proc.end"]}))
    with raw(pg_database) as db:  # (the signature is outside the hash: the writer's to set)
        db.execute("UPDATE audit SET sig = ? WHERE seq = ?",
                   (f"{AuditKey.open().public} {'ab' * 64}", marker))  # (a trusted key's)
    forged = append_past_head(pg_database, AuditRecord(
        phase="admin", syscall="proc.end", pid=pid,
        detail={"state": "killed", "reason": "forged"}))
    assert cli_main(["ps", "--json", "--db", pg_database]) == 0
    rows = {p["pid"]: p for p in json.loads(capsys.readouterr().out)}
    async with Kernel.open(pg_database, fs_root=fs_root) as kernel:  # (the broker runs it)
        assert kernel.process(pid).alive
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    assert rows[pid].get("held_by") is None, (forged, rows[pid])


async def test_a_chain_marked_before_signed_markers_shows_held_once_a_broker_signs_one(
        pg_database: str, fs_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A store brokers shared before markers were signed (its marker's signature taken away:
    outside the hash, the chain stays whole): `ps` cannot tell it from a writer's marker, so
    shows nothing held, until the next shared open appends a marker of its own, signed, once;
    then the unsigned end's process shows held, as that broker holds it."""
    parent, _ = await _parent_and_child(pg_database, fs_root)
    with raw(pg_database) as db:
        db.execute("UPDATE audit SET sig = NULL WHERE syscall = ?", (MARKER,))
    forged = _forge_end(pg_database, parent)
    assert _held(pg_database, capsys) == {}
    for broker in ("b", "b"):  # (the second open finds the signed marker: appends none)
        async with Kernel.open(pg_database, fs_root=fs_root, broker=broker):
            pass
    with raw(pg_database) as db:
        signed = [sig is not None for (sig,) in db.execute(
            "SELECT sig FROM audit WHERE syscall = ? ORDER BY seq", (MARKER,)).fetchall()]
    assert signed == [False, True]
    assert _held(pg_database, capsys) == {parent: forged}


def _held(dsn: str, capsys: pytest.CaptureFixture[str]) -> dict[int, int]:
    assert cli_main(["ps", "--json", "--db", dsn]) == 0
    return {p["pid"]: p["held_by"] for p in json.loads(capsys.readouterr().out)
            if p.get("held_by") is not None}
