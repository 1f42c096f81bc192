"""Red team of the one-record tool call (`broker.kernel.read_commit.HeldCall`): a call whose
record is held in memory must be chained before anything durable it causes.

A budget that runs out kills the process (and its children): a durable change, an act of
the broker caused by the call. Before the held call, the `tool.call` intent waited deferred
and was committed by the kill's own transaction; with it held, the kill was committed first
and the call's record came after (or, on a crash in between, never). Real SQLite: the
audit is read through a second connection the moment the kill is committed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel, LimitExceeded
from broker.kernel.image import Budget
from tests.broker.kernel.test_read_commit import CAPS, _since
from tests.conftest import open_image


def _durable_calls(db_path: Path, pid: int) -> list[tuple[int, str]]:
    with sqlite3.connect(db_path) as other:
        return list(other.execute(
            "SELECT seq, phase FROM audit WHERE pid=? AND syscall='tool.call' ORDER BY seq",
            (pid,)))


@pytest.mark.parametrize(("budget", "tool", "args"), [
    (Budget(tool_calls=1), "now", {}),  # the tool.call's own charge kills
    (Budget(syscalls=1), "write_file", {"path": "/out/x.txt", "data": "x"}),  # its syscall's
])
async def test_a_budget_kill_comes_after_the_call_record_that_caused_it(
        kernel: Kernel, db_path: Path, budget: Budget, tool: str, args: Any) -> None:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "out").mkdir()
    await open_image(kernel, "frugal", needs=("fs:/**:read,write", "clock:*:read"),
                     tools=("now", "write_file"), budget=budget)
    await open_image(kernel, "free", needs=("fs:/**:read,write", "clock:*:read"),
                     tools=("now", "write_file"))
    pid = kernel.spawn("frugal", caps=CAPS)
    if budget.tool_calls:
        await kernel.call_tool(pid, "now", {})  # spends the one call
    before = kernel.store.head_seq
    seen: list[list[tuple[int, str]]] = []
    end = kernel.queue.end_requests

    def ending(*a: Any, **k: Any) -> Any:
        done = end(*a, **k)  # the kill, committed
        seen.append([c for c in _durable_calls(db_path, pid) if c[0] > before])
        return done

    kernel.queue.end_requests = ending  # type: ignore[method-assign]
    with pytest.raises(LimitExceeded, match="budget"):
        await kernel.call_tool(pid, tool, args)
    assert kernel.process(pid).state.value == "killed"
    assert seen and seen[0], "the process was killed before its tool.call was recorded"
    assert seen[0][0][1] == "intent"  # chained first: its outcome comes after the kill
    records = _since(kernel, pid, before)
    call = records[0]
    assert (call["syscall"], call["phase"]) == ("tool.call", "intent")
    outcome = next(r for r in records if r["syscall"] == "tool.call" and r["phase"] == "outcome")
    assert outcome["detail"]["intent"] == call["seq"]
    assert outcome["detail"]["error"] == "LIMIT_EXCEEDED"
    assert not (root / "out" / "x.txt").exists()
    assert kernel.verify_audit()[1] == []
    # A neighbour without the budget: its effect-less call is still one whole record.
    free = kernel.spawn("free", caps=CAPS)
    mark = kernel.store.head_seq
    await kernel.call_tool(free, "now", {})
    assert [r["phase"] for r in _since(kernel, free, mark) if r["syscall"] == "tool.call"] == [
        "intent+outcome"]
