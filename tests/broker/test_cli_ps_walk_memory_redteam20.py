"""Red team 20 on the walk `libos ps` keeps (`broker.store.walk_memory`): the gap DESIGN §9
names, in a case its first wording left out. A kill forged past the signed head is discounted
by the `caps.unvouched` note the broker's next open writes; `ps` keeps its walk past the note.
A writer then edits a record after the note in place (its hash column left): a full walk
finds the break after the note, which then no longer stands (failing closed), so the forged
kill counts and the row is `ended by` it; the kept walk shows the chain as walked, the row
live. Only a display (the broker's next open walks whole; `libos audit --verify` names the
edit): pinned so, and so worded in §9."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker import Kernel
from broker.cli import main as cli_main
from broker.store import AuditRecord
from tests.broker.kernel.test_ends_unvouched_redteam5 import forge_host_kill
from tests.broker.test_cli_ps_walk_memory import count_reads, fresh, ps
from tests.conftest import open_image


async def test_a_break_after_a_note_below_the_kept_head_is_not_seen(
        db_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
    forged = forge_host_kill(db_path, pid)
    async with Kernel.open(db_path) as kernel:  # (its open notes the span: the row stays live)
        assert kernel.process(pid).alive
        for i in range(5):
            kernel.store.append_audit(AuditRecord(phase="admin", syscall="note", detail={"i": i}))
    assert "ended_by" not in next(p for p in ps(db_path, capsys) if p["pid"] == pid)
    with sqlite3.connect(db_path) as con:  # (a record after the note, edited in place)
        [(seq,)] = con.execute("SELECT MAX(seq) FROM audit WHERE syscall='note'").fetchall()
        con.execute("UPDATE audit SET detail='{\"i\":-1}' WHERE seq=?", (seq - 2,))
    con.close()
    read = count_reads(monkeypatch)
    kept = next(p for p in ps(db_path, capsys) if p["pid"] == pid)
    assert read[0] < 20, read[0]  # (the kept walk: the edit not read)
    assert "ended_by" not in kept
    assert next(p for p in fresh(db_path, capsys) if p["pid"] == pid)["ended_by"] == forged
    assert cli_main(["audit", "--verify", "--db", str(db_path)]) == 1
    assert f"record {seq - 2}: content does not match its hash" in capsys.readouterr().out
