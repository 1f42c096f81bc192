"""Group commit across concurrent processes (`broker.kernel.group_commit`): while many
processes run under planners, one commit carries the records of many steps, and still nothing
reaches the world (an embedder's function, a planner) before the record that announces it is
on disk, as another connection to the store sees it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, CallTool, Exit, HostCall, Kernel, Observation, ScriptedPlanner
from broker.kernel import group_commit
from tests.broker.kernel.test_step_commits import _transactions

PROCESSES = 12
STEPS = 5


class Watching:
    """A planner (the world, for a model planner) that, before each action, looks at the store
    from another connection: the outcome of each step it has been shown is on disk."""

    def __init__(self, db: Path, tool: str, args: dict[str, Any]) -> None:
        self.db, self.tool, self.args = db, tool, args
        self.pid: int | None = None
        self.missing: list[tuple[int, int]] = []

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        if history:
            assert history[-1].error is None, history[-1].error
            with sqlite3.connect(self.db) as other:
                on_disk = other.execute(
                    "SELECT COUNT(*) FROM audit WHERE pid=? AND syscall='tool.call' AND"
                    " phase IN ('outcome', 'intent+outcome')", (self.pid,)).fetchone()[0]
            if on_disk < len(history):
                self.missing.append((len(history), on_disk))
        return CallTool(self.tool, self.args) if len(history) < STEPS else Exit(0)


async def _run_all(kernel: Kernel, db: Path, image: str, caps: list[str], tool: str,
                   args: dict[str, Any]) -> list[Watching]:
    planners = []
    pids = []
    for _ in range(PROCESSES):
        planner = Watching(db, tool, args)
        pid = kernel.spawn(image, caps=caps, planner=planner)
        planner.pid = pid
        planners.append(planner)
        pids.append(pid)
    for pid in pids:
        status = await kernel.wait(pid)
        assert status["state"] == "exited" and status["exit_code"] == 0, status
    return planners


async def test_concurrent_steps_share_commits_and_are_durable_before_shown(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "WINDOW", 60.0)  # only writes carry the checkpoints
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage("ticker", tools=("now",),
                                               needs=("clock:*:read",)))
        statements: list[str] = []
        kernel.store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        planners = await _run_all(kernel, db_path, "ticker", ["clock:*:read"], "now", {})
        kernel.store._db.set_trace_callback(None)  # type: ignore[attr-defined]
        assert [p.missing for p in planners] == [[]] * PROCESSES
        steps = PROCESSES * STEPS
        carrying = [t for t in _transactions(statements)
                    if any("'tool.call'" in s or "'clock.now'" in s for s in t)]
        # A commit each for a step's intent, its read and its outcome alone: 3 a step. Grouped,
        # a commit carries the same record of (nearly) every process.
        assert len(carrying) < steps / 2, (len(carrying), steps)
        count, problems = kernel.verify_audit()
        assert problems == [] and count >= steps  # (a step: its call whole, its read in it)


async def test_an_embedders_function_sees_its_intent_on_disk_under_group_commit(
        db_path: Path) -> None:
    seen: list[tuple[int, str | None]] = []

    def notify(call: HostCall, text: str) -> str:
        with sqlite3.connect(db_path) as other:  # what a crash now would leave
            row = other.execute("SELECT phase FROM audit WHERE seq=?", (call.call,)).fetchone()
        seen.append((call.call, row[0] if row else None))
        return text.upper()

    async with Kernel.open(db_path) as kernel:
        kernel.host_tool(notify, kind="notice", right="send")
        await kernel.register_image(AgentImage("notifier", tools=("notify",),
                                               needs=("notice:*:send",)))
        planners = await _run_all(kernel, db_path, "notifier", ["notice:*:send"], "notify",
                                  {"text": "hi"})
        assert [p.missing for p in planners] == [[]] * PROCESSES
        assert len(seen) == PROCESSES * STEPS
        assert {phase for _, phase in seen} == {"intent"}
        assert kernel.verify_audit()[1] == []


async def test_one_process_alone_commits_as_before(kernel: Kernel) -> None:
    """With one process, nothing could join its commits: its records are not deferred
    (no wait for a group), so a single caller's latency is what it was."""
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    group = kernel.dispatcher.group
    waits = 0
    real = group.durable

    async def counting() -> None:
        nonlocal waits
        waits += 1
        await real()

    group.durable = counting  # type: ignore[method-assign]
    pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=Watching(
        Path(kernel.store.path), "now", {}))  # type: ignore[attr-defined]
    await kernel.wait(pid)
    assert waits == 0
    assert kernel.store.deferred_total - kernel.store.committed_total <= 2  # checkpoints


async def test_a_cancelled_wait_leaves_its_intent_with_an_outcome(db_path: Path) -> None:
    """A process killed while its grouped `tool.call` intent waits for the commit: the
    intent gets an outcome (not ok), and the tool never ran."""
    ran: list[int] = []

    def effect(call: HostCall) -> int:
        ran.append(call.pid)
        return 1

    async with Kernel.open(db_path) as kernel:
        kernel.host_tool(effect, kind="effect", right="do")
        await kernel.register_image(AgentImage("doer", tools=("effect",),
                                               needs=("effect:*:do",)))
        group = kernel.dispatcher.group
        real = group.durable
        killed: list[int] = []

        async def kill_the_first_waiter() -> None:
            name = trio.lowlevel.current_task().name
            if not killed and name.startswith("libos-pid-"):
                killed.append(int(name.removeprefix("libos-pid-")))
                kernel.kill(killed[0])
            await real()

        group.durable = kill_the_first_waiter  # type: ignore[method-assign]
        pids = [kernel.spawn("doer", caps=["effect:*:do"], planner=ScriptedPlanner(
            [CallTool("effect", {})])) for _ in range(3)]
        for pid in pids:
            await kernel.wait(pid)
        assert killed and killed[0] not in ran and len(ran) == 2
        calls = [r for r in kernel.audit(killed[0]) if r["syscall"] == "tool.call"]
        assert [r["phase"] for r in calls] == ["intent", "outcome"]
        assert calls[1]["detail"]["ok"] is False
        assert calls[1]["detail"]["intent"] == calls[0]["seq"]
        assert kernel.verify_audit()[1] == []


class _Counters:
    """Stands for the store's counters (`deferred_total`, `committed_total`): what the
    group commit's timer reads, and a commit that takes every write deferred by then."""

    deferred_total = committed_total = commits = 0

    def commit_deferred(self) -> None:
        self.committed_total = self.deferred_total
        self.commits += 1


async def test_a_write_that_asked_while_another_waited_is_committed_by_the_timer(
        autojump_clock: trio.testing.MockClock) -> None:
    """A write that asks while an earlier one still waits is not noted (the commit due for
    the earlier takes it); one that a commit of only some writes (one at a time, after a
    refusal) left behind is still committed within the window."""
    store = _Counters()
    group = group_commit.GroupCommit(store)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run)
        for total in (1, 2, 3):  # three steps ask; the first's commit takes them all
            store.deferred_total = total
            group.soon()
        await trio.sleep(2 * group_commit.WINDOW)
        assert (store.committed_total, store.commits) == (3, 1)
        store.deferred_total = 4
        group.soon()
        store.deferred_total = 5
        group.soon()
        store.committed_total = 4  # a commit took only the first
        await trio.sleep(2 * group_commit.WINDOW)
        assert (store.committed_total, store.commits) == (5, 2)
        nursery.cancel_scope.cancel()
