"""One commit per read (`broker.kernel.read_commit`): a syscall that changes nothing writes its
intent and outcome as one record (phase `intent+outcome`) after the read; anything else keeps
its intent durable before its effect.

The store refusing a record is real SQLite refusing it: a trigger, added through a second
connection, aborts the insert of exactly one kind of record.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel, NotFound
from broker.kernel.process import AgentProcess
from broker.store import args_hash
from tests.broker.kernel.test_dispatch_pipeline import _store_refuses
from tests.broker.kernel.traced_sql import audit_inserts
from tests.conftest import open_image

CAPS = ["fs:/data/**:read", "fs:/out/**:write", "clock:*:read"]


async def _reader(kernel: Kernel) -> AgentProcess:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "data").mkdir()
    (root / "out").mkdir()
    (root / "data" / "note.txt").write_text("hello")
    await open_image(kernel, needs=("fs:/**:read,write", "clock:*:read"),
                     tools=("read_file", "write_file", "now"))
    return kernel.process(kernel.spawn("agent", caps=CAPS))


def _since(kernel: Kernel, pid: int, seq: int) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["seq"] > seq]


def _statements(kernel: Kernel) -> list[str]:
    """The statements the store runs from now on: their first word, and for an INSERT into
    the audit how many records it writes ("INSERT 2": one statement, so one commit, or in
    one)."""
    seen: list[str] = []

    def trace(sql: str) -> None:
        word = sql.split()[0].upper()
        rows = audit_inserts(sql)
        seen.append(f"{word} {len(rows)}" if rows else word)

    kernel.store._db.set_trace_callback(trace)  # type: ignore[attr-defined]
    return seen


async def test_a_read_writes_its_intent_and_outcome_as_one_record(kernel: Kernel) -> None:
    proc = await _reader(kernel)
    before = kernel.store.head_seq
    seen = _statements(kernel)
    assert kernel.dispatcher.run_now(proc, None, "fs.read", {"path": "/data/note.txt"}) == "hello"
    # (a SELECT first: the file's labels, looked up once and then remembered)
    assert [s for s in seen if s != "SELECT"] == ["INSERT 1"]
    seen.clear()
    assert kernel.dispatcher.run_now(proc, None, "fs.read", {"path": "/data/note.txt"}) == "hello"
    assert seen == ["INSERT 1"]  # one record, one statement: committed on its own
    before += 1
    [whole] = _since(kernel, proc.pid, before)
    assert (whole["phase"], whole["syscall"], whole["resource"]) == (
        "intent+outcome", "fs.read", "/data/note.txt")
    assert whole["cap_id"] is not None
    assert whole["args_hash"] == args_hash({"path": "/data/note.txt"})
    # The intent's arguments first, then the outcome's detail; no `intent` (it is its own).
    assert list(whole["detail"]) == ["args", "ok", "result", "result_hash"]
    assert whole["detail"]["args"] == {"path": "/data/note.txt"}
    assert whole["detail"]["ok"] is True and whole["detail"]["result"] == "hello"
    assert kernel.verify_audit()[1] == []


async def test_a_failed_read_is_one_record_too(kernel: Kernel) -> None:
    proc = await _reader(kernel)
    before = kernel.store.head_seq
    with pytest.raises(NotFound):
        kernel.dispatcher.run_now(proc, None, "fs.read", {"path": "/data/missing.txt"})
    [whole] = _since(kernel, proc.pid, before)
    assert whole["phase"] == "intent+outcome" and whole["detail"]["ok"] is False
    assert whole["detail"]["error"] == "NOT_FOUND"
    assert whole["detail"]["args"] == {"path": "/data/missing.txt"}
    assert "intent" not in whole["detail"]


async def test_a_read_whose_records_cannot_be_written_leaves_neither_and_answers_nothing(
        db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        proc = await _reader(kernel)
        before = kernel.store.head_seq
        with _store_refuses(db_path, "intent+outcome", "fs.read"), pytest.raises(
                sqlite3.IntegrityError, match="disk says no"):
            kernel.dispatcher.run_now(proc, None, "fs.read", {"path": "/data/note.txt"})
        # The intent went with the outcome: no record at all, and the chain is whole.
        assert _since(kernel, proc.pid, before) == []
        assert kernel.store.head_seq == before
        assert kernel.verify_audit()[1] == []
        # The next read goes through, linked where the chain stands.
        assert kernel.dispatcher.run_now(proc, None, "clock.now", {}) > 0
        [whole] = _since(kernel, proc.pid, before)
        assert whole["seq"] == before + 1 and whole["syscall"] == "clock.now"
    async with Kernel.open(db_path) as kernel:  # nothing for recovery to settle
        assert [r["phase"] for r in _since(kernel, proc.pid, before)] == ["intent+outcome"]
        assert kernel.verify_audit()[1] == []


async def test_a_write_keeps_its_intent_durable_before_its_effect(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        proc = await _reader(kernel)
        before = kernel.store.head_seq
        seen = _statements(kernel)
        with _store_refuses(db_path, "outcome", "fs.write"), pytest.raises(
                sqlite3.IntegrityError, match="disk says no"):
            kernel.dispatcher.run_now(proc, None, "fs.write",
                                      {"path": "/out/w.txt", "data": "x"})
        assert seen[0] == "INSERT 1"  # the intent, committed on its own, first
        [intent] = _since(kernel, proc.pid, before)
        assert intent["phase"] == "intent" and intent["syscall"] == "fs.write"
        assert Path(kernel.fs.root, "out", "w.txt").read_text() == "x"  # type: ignore[attr-defined]


def _commits(seen: list[str]) -> int:
    """Commits among `seen`: each COMMIT, and each write outside BEGIN…COMMIT (autocommit)."""
    commits, open_ = 0, False
    for statement in seen:
        if statement == "BEGIN":
            open_ = True
        elif statement in ("COMMIT", "ROLLBACK"):
            commits += statement == "COMMIT"
            open_ = False
        elif statement.split()[0] in ("INSERT", "UPDATE", "DELETE") and not open_:
            commits += 1
    return commits


async def test_a_builtin_tool_call_of_a_read_costs_one_commit(kernel: Kernel) -> None:
    """The tool call's intent is held for its first effect or its outcome, and a builtin's
    read (answered to broker code) goes with that outcome: one commit, and one record, as
    every builtin is exactly one syscall whose read is folded into the call's record
    (`test_wrapped_record`)."""
    proc = await _reader(kernel)
    args = {"path": "/data/note.txt"}
    assert await kernel.call_tool(proc.pid, "read_file", args) == "hello"
    before = kernel.store.head_seq
    seen = _statements(kernel)
    assert await kernel.call_tool(proc.pid, "read_file", args) == "hello"
    assert seen == ["INSERT 1"]  # (since wrapped: the call written whole, its read in it)
    [call] = [r.to_json() for r in kernel.store.audit_records(pid=proc.pid, after=before)]
    assert (call["phase"], call["syscall"]) == ("intent+outcome", "tool.call")
    assert call["detail"]["wraps"]["syscall"] == "fs.read"
    assert call["detail"]["result"] == "hello"
    assert kernel.verify_audit()[1] == []


async def test_a_tool_that_writes_commits_its_call_before_the_write(kernel: Kernel) -> None:
    """A builtin that writes: the held tool call intent is committed with the write's intent,
    before the write; the outcomes follow."""
    proc = await _reader(kernel)
    seen = _statements(kernel)
    await kernel.call_tool(proc.pid, "write_file", {"path": "/out/a.txt", "data": "x"})
    assert _commits(seen) == 3  # (call + write intents), the write's outcome, the call's
    assert seen[0] == "INSERT 2"
