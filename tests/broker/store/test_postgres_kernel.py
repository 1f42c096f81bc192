"""A kernel on PostgreSQL, end to end: spawn, tool calls with their intent and outcome
records, a denial, an approval asked in the broker and answered from the CLI (another
opener of the database), a one-shot grant under 100 concurrent attempts, the chain verified
by the kernel and by `libos audit --verify --db postgresql://...`, and a restart that goes
on with the same chain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel, NotCapable
from broker.cli import main as cli
from tests.conftest import open_image

ASK_WRITE = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}
ONE_SHOT = {"kind": "fs", "scope": "/once.txt", "rights": ["write"], "uses": 1}


async def _collect(results: list[Any], call: Any) -> None:
    try:
        results.append(await call)
    except Exception as exc:
        results.append(exc)


async def test_a_kernel_on_postgresql(pg_database: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    fs_root = tmp_path / "fs"
    (fs_root / "out").mkdir(parents=True)
    async with Kernel.open(pg_database, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/**:read,write", ASK_WRITE, ONE_SHOT])
        await kernel.call_tool(pid, "make_dir", {"path": "/data"})
        assert await kernel.call_tool(pid, "write_file", {"path": "/data/a.txt",
                                                          "data": "hello"}) == 5
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/a.txt"}) == "hello"
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/etc/passwd"})
        phases = [(r["syscall"], r["phase"]) for r in kernel.audit(pid)]
        assert phases.count(("fs.write", "intent")) == phases.count(("fs.write", "outcome")) == 1
        assert ("fs.read", "denied") in phases

        # An approval: the call waits in the broker; the CLI answers it from the database.
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, results, kernel.call_tool(
                pid, "write_file", {"path": "/out/r.txt", "data": "report"}))
            with trio.fail_after(10):
                while not kernel.approvals():
                    await trio.sleep(0.01)
            assert cli(["approvals", "--json", "--db", pg_database]) == 0
            [listed] = json.loads(capsys.readouterr().out)
            assert cli(["approve", listed["id"], "--db", pg_database]) == 0
            assert "approved (once)" in capsys.readouterr().out
        assert results == [6] and (fs_root / "out" / "r.txt").read_text() == "report"
        answer = [r for r in kernel.audit() if r["syscall"] == "approval.answer"]
        assert answer and answer[0]["detail"]["request"] == listed["id"]
        assert answer[0]["detail"]["answer"] == "once"

        # A one-shot grant spent once among 100 concurrent attempts, atomically with its intent.
        attempts: list[Any] = []
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(_collect, attempts, kernel.call_tool(
                    pid, "write_file", {"path": "/once.txt", "data": "x"}))
        assert sum(r == 1 for r in attempts) == 1
        assert sum(isinstance(r, NotCapable) for r in attempts) == 99
        count, problems = kernel.verify_audit()
        assert problems == [] and count == kernel.store.head_seq
    assert cli(["audit", "--verify", "--json", "--db", pg_database]) == 0
    assert json.loads(capsys.readouterr().out) == {"records": count, "ok": True,
                                                   "problems": []}
    assert cli(["ps", "--json", "--db", pg_database]) == 0
    assert [p["pid"] for p in json.loads(capsys.readouterr().out)] == [pid]

    # A restart: the same chain goes on, the process and its files are still there.
    async with Kernel.open(pg_database, fs_root=fs_root) as kernel:
        assert len(list(kernel.store.audit_records())) == count  # (the records, not listed)
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/a.txt"}) == "hello"
        records = [r.to_json() for r in kernel.store.audit_records()]
        assert [r["seq"] for r in records] == list(range(1, len(records) + 1)) and \
            len(records) > count
        assert kernel.verify_audit()[1] == []
