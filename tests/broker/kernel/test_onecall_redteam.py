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
import trio

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


SLOW = """export default async function run(args: any, libos: any) {
  await new Promise((r) => setTimeout(r, 1500));
  return "slow done"; }"""


BRIEF = """export default async function run(args: any, libos: any) {
  await new Promise((r) => setTimeout(r, 300));
  return "brief done"; }"""


@pytest.mark.parametrize("begun", ["during the step", "before the step"])
async def test_a_host_call_beside_a_held_step_call_is_not_taken_for_the_step(
        db_path: Path, begun: str) -> None:
    """A planner's step calls a sandboxed tool that makes no syscall: its `tool.call` record
    is held until it ends. A host's call (an MCP client's) on the same process, made and
    answered meanwhile, is written first. The broker dies after the step's call is recorded,
    before its checkpoint. Recovery takes the step's call to be the first top-level
    `tool.call` since the checkpoint: it must be the step's own (its action), never the
    host's, whose answer is not the step's result. Begun before the step (before its
    checkpoint) and answered during it, the host's call must not land after the checkpoint as
    a top-level call either."""
    from sandboxes.deno import DenoSandbox
    from tests.broker.kernel.crashing import Crash, crash_after, outcome_of

    def steps(_: object, record: object, *__: object, **___: object) -> bool:
        # The step's call's outcome: written whole (held to its end), or after its intent.
        return outcome_of("tool.call")(_, record) and record.resource == "slow"  # type: ignore[attr-defined]

    undo_whole = crash_after("append_call", steps)
    undo_alone = crash_after("append_audit", steps)

    def undo() -> None:
        undo_alone()
        undo_whole()

    try:
        with pytest.raises(BaseException) as caught:
            async with DenoSandbox(spares=0) as deno, \
                    Kernel.open(db_path, sandboxes=[deno]) as kernel:
                slow = {"name": "slow", "lang": "ts", "source": SLOW}
                brief = {"name": "brief", "lang": "ts", "source": BRIEF}
                await open_image(kernel, "stepper", needs=("clock:*:read",), tools=(
                    "now", slow, brief), planner={"kind": "scripted", "actions": [
                        {"tool": "slow", "args": {}}, {"exit": 0}]})
                pid = kernel.spawn("stepper", caps=["clock:*:read"])
                if begun == "before the step":
                    # Begun at once (its record held), answered while the step's call runs.
                    assert await kernel.call_tool(pid, "brief", {}) == "brief done"
                    assert kernel.process(pid).usage.tool_calls >= 2  # the step's is on too
                else:
                    with trio.fail_after(30):
                        while kernel.process(pid).usage.tool_calls < 1:  # the step's is on
                            await trio.sleep(0.005)
                    host = await kernel.call_tool(pid, "now", {})  # beside it: answered first
                    assert isinstance(host, float)
                await trio.sleep(30)
        assert caught.group_contains(Crash)
    finally:
        undo()
    async with Kernel.open(db_path) as kernel:
        status = await kernel.wait(1, timeout=10)
        assert status["state"] == "exited"
        history = kernel.process(1).history
        assert [o.action.name for o in history] == ["slow"]
        assert history[0].result == "slow done", history[0]  # the step's, not the host's
        assert kernel.verify_audit()[1] == []
