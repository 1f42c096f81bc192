"""What a scheduler step commits (group commit, `Connected.defer`): the checkpoint before the
step goes in one transaction with the step's `tool.call` intent, which is held for the tool's
first effect or its outcome (`broker.kernel.read_commit`): a builtin's read goes with that
outcome, so a step of a read is one commit. The observation with the checkpoint after waits
for the next write (the next step's), or for `group_commit.WINDOW` while a planner thinks."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from broker import AgentImage, CallTool, Exit, Kernel, Observation, ScriptedPlanner
from broker.kernel import group_commit
from tests.broker.kernel.traced_sql import audit_inserts, audit_rows

STEPS = 4


def _transactions(statements: list[str]) -> list[list[str]]:
    """The writes grouped by the commit that made them durable."""
    done: list[list[str]] = []
    current: list[str] | None = None
    for sql in statements:
        word = sql.split()[0].upper()
        if word == "BEGIN":
            current = []
        elif word == "COMMIT":
            assert current is not None
            done.append(current)
            current = None
        elif word in ("INSERT", "UPDATE", "DELETE"):
            if current is None:
                done.append([sql])  # autocommit
            else:
                current.append(sql)
    return done


async def test_a_step_commits_its_checkpoint_with_its_intent(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_commit, "WINDOW", 60.0)  # only the next write carries it
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    statements: list[str] = []
    kernel.store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    pid = kernel.spawn("ticker", caps=["clock:*:read"],
                       planner=ScriptedPlanner([CallTool("now", {})] * STEPS))
    await kernel.wait(pid)
    kernel.store._db.set_trace_callback(None)  # type: ignore[attr-defined]
    steps = [t for t in _transactions(statements)
             if any("INTO checkpoint_log" in s and '"pending":{' in s for s in t)]
    assert len(steps) == STEPS
    for writes in steps:  # the checkpoint before, the step's call (whole since onecall: it
        assert [row for s in writes for row in audit_inserts(s)] == [  # had no effect; its
            "intent+outcome tool.call"]  # read folded into it since wrapped)
    # ...with the observation and checkpoint after the step before, when there was one.
    carried = [t for t in steps if any("INTO observations" in s for s in t)]
    assert len(carried) == STEPS - 1
    # Each step: that one commit (six before group commit, three before the lazy intent);
    # the last observation goes with the process's exit, or with whichever of the kernel's
    # own periodic writes (events, the head's signing) comes first on a loaded machine.
    commits = _transactions(statements)
    first = commits.index(steps[0])
    last = max(i for i, t in enumerate(commits) if any("INTO observations" in s for s in t))
    assert last - first == STEPS
    assert any("UPDATE processes SET state='exited'" in s for t in commits[last:] for s in t)
    latest = kernel.store.checkpoint(pid)
    assert latest is not None and json.dumps(latest["state"]["pending"]) == "null"


class Thinking:
    """A planner that takes its time before each action, as a model does."""

    def __init__(self, steps: int, seconds: float) -> None:
        self.steps, self.seconds = steps, seconds
        self.seen_on_disk: list[int] = []
        self.db: Path | None = None

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        await trio.sleep(self.seconds)
        assert self.db is not None
        with sqlite3.connect(self.db) as other:  # what a crash now would leave
            self.seen_on_disk.append(other.execute(
                "SELECT COUNT(*) FROM observations").fetchone()[0])
        return CallTool("now", {}) if len(history) < self.steps else Exit(0)


async def test_a_planner_that_thinks_finds_the_step_before_it_on_disk(
        kernel: Kernel, db_path: Path) -> None:
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    planner = Thinking(3, seconds=10 * group_commit.WINDOW)
    planner.db = db_path
    pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=planner)
    await kernel.wait(pid)
    # Asked before each step and before exiting: every observation was durable by then.
    assert planner.seen_on_disk == [0, 1, 2, 3]


async def test_concurrent_steps_commit_like_one_step(
        kernel: Kernel, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While several processes step (their records group-committed), a step of a builtin's
    read still makes one commit's worth of records: its `tool.call` intent is held for the
    tool's first effect and the read is answered inside the broker, so neither waits for a
    group commit of its own; the tool's outcome is durable before its planner sees it."""
    monkeypatch.setattr(group_commit, "WINDOW", 60.0)
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    statements: list[str] = []
    kernel.store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    waits = 0
    durable = kernel.dispatcher.group.durable

    async def counted() -> None:
        nonlocal waits
        waits += 1
        await durable()

    monkeypatch.setattr(kernel.dispatcher.group, "durable", counted)
    seen_on_disk: list[bool] = []

    def planner(pid_of: list[int]) -> ScriptedPlanner:
        def policy(history: Sequence[Observation]) -> CallTool | Exit:
            with sqlite3.connect(db_path) as other:  # what a crash now would leave
                outcomes = other.execute(
                    "SELECT COUNT(*) FROM audit WHERE pid=? AND phase IN ('outcome',"
                    " 'intent+outcome') AND"
                    " syscall='tool.call'", (pid_of[0],)).fetchone()[0]
            seen_on_disk.append(outcomes == len(history))
            return CallTool("now", {}) if len(history) < STEPS else Exit(0)
        return ScriptedPlanner(policy)

    pids = []
    for _ in range(3):
        pid_of: list[int] = []
        pids.append(kernel.spawn("ticker", caps=["clock:*:read"], planner=planner(pid_of)))
        pid_of.append(pids[-1])
    for pid in pids:
        await kernel.wait(pid)
    kernel.store._db.set_trace_callback(None)  # type: ignore[attr-defined]
    for writes in _transactions(statements):
        records = [row for sql in writes for row in audit_rows(sql)]
        for pid, shown in records:  # an intent goes with its outcome, never alone
            if shown == "intent tool.call":
                assert (pid, "outcome tool.call") in records
            if shown == "intent clock.now":
                assert (pid, "outcome clock.now") in records
    # At most one group commit a step (the tool's outcome; none when it steps alone), and
    # one for its exit (`broker.kernel.exiting`).
    assert 0 < waits <= 3 * (STEPS + 1)
    assert len(seen_on_disk) == 3 * (STEPS + 1) and all(seen_on_disk)



async def test_a_busy_process_makes_no_commit_for_a_checkpoint_its_next_step_carried(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window of the checkpoint after a step runs from when that step asked, not from
    the first of many: a process that steps on for several windows (its planner's work
    holding the thread, as a loaded CPU does) gets no commit from the group commit's timer,
    whose every checkpoint the next step carried. (Before: one commit each window, of the
    newest checkpoint, deferred a moment before.)"""
    window = 0.3
    monkeypatch.setattr(group_commit, "WINDOW", window)
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    steps = 60
    timer_commits = 0
    commit = kernel.store.commit_deferred

    def counted() -> None:
        nonlocal timer_commits
        if trio.lowlevel.current_task().name == "libos-group-commit" and kernel.store.deferred:
            timer_commits += 1
        commit()

    monkeypatch.setattr(kernel.store, "commit_deferred", counted)

    def busy(history: Sequence[Observation]) -> CallTool | Exit:
        time.sleep(window / 15)  # (holds the thread: no other task runs meanwhile)
        return CallTool("now", {}) if len(history) < steps else Exit(0)

    pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=ScriptedPlanner(busy))
    await kernel.wait(pid)
    assert timer_commits == 0
    assert len(kernel.store.observations(pid)) == steps


async def test_the_timer_still_commits_a_checkpoint_nothing_carried(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint no later write carried is committed by the timer, `WINDOW` after its
    step asked, while the planner still thinks."""
    monkeypatch.setattr(group_commit, "WINDOW", 0.05)
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    thinking = trio.Event()

    async def slow(history: Sequence[Observation]) -> CallTool | Exit:
        if len(history) == 1:
            thinking.set()
            await trio.sleep(3600)
        return CallTool("now", {}) if not history else Exit(0)

    pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=ScriptedPlanner(slow))
    await thinking.wait()
    with trio.fail_after(10):
        while kernel.store.committed_total < kernel.store.deferred_total:
            await trio.sleep(0.01)
    kernel.kill(pid)
