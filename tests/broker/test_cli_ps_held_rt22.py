"""Red team 22 on lane heldbits' `libos ps` held rows (`revived.held_ends`): a database
writer without the key appends an `audit.signed` marker and an unsigned end of a live
process to a single writer's SQLite store (no broker shared it: nothing is ever held there).
The broker runs the process (the end is past the signed anchor: it counts for nothing), but
`ps` walked the chain as brokers sharing it would and said `held by unsigned record N, not
run`: one forged row made the host's view false. The same on a PostgreSQL store a single
broker writes (no `--broker`) is left a strict xfail: a reader cannot tell the modes apart."""

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


@pytest.mark.xfail(strict=True, reason=(
    "LOW: on PostgreSQL a reader cannot tell whether the next open is a single writer's (which"
    " runs the process: no signatures asked) or a sharing broker's (which holds it): the"
    " `audit.signed` marker is not signed, so a writer's marker makes ps say held; DESIGN §9"))
async def test_a_forged_marker_on_a_single_writers_postgres_store_shows_held(
        pg_database: str, fs_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(pg_database, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
    append_past_head(pg_database, AuditRecord(phase="admin", syscall=MARKER, pid=None,
                                              detail={"signed": ["proc.end"]}))
    forged = append_past_head(pg_database, AuditRecord(
        phase="admin", syscall="proc.end", pid=pid,
        detail={"state": "killed", "reason": "forged"}))
    assert cli_main(["ps", "--json", "--db", pg_database]) == 0
    rows = {p["pid"]: p for p in json.loads(capsys.readouterr().out)}
    async with Kernel.open(pg_database, fs_root=fs_root) as kernel:  # (the broker runs it)
        assert kernel.process(pid).alive
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    assert rows[pid].get("held_by") is None, (forged, rows[pid])
