"""A process's own exit rides on the group commit (`broker.kernel.exiting`): while others
step beside it, its end is written with their records, not in commits of its own; and still
nobody sees the exit (its state in the broker, `wait`, its event, the lineage) before it is
on disk, as another connection to the store sees it."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from broker import AgentImage, CallTool, Cancelled, Exit, Kernel, Observation, ScriptedPlanner
from broker.lifecycle import State
from tests.broker.kernel.test_approval_lifetime import _collect, _pending, _proc, _settled
from tests.broker.kernel.test_step_commits import _transactions

PROCESSES = 12
STEPS = 3


def _on_disk(db: sqlite3.Connection, pid: int) -> tuple[str, int]:
    """The process's state and how many `state` events say it exited, as a crash now would
    leave them."""
    state = db.execute("SELECT state FROM processes WHERE pid=?", (pid,)).fetchone()[0]
    events = db.execute("SELECT COUNT(*) FROM events WHERE pid=? AND kind='state' AND"
                        " data LIKE '%\"new\":\"exited\"%'", (pid,)).fetchone()[0]
    return state, events


async def _spawn_tickers(kernel: Kernel, count: int = PROCESSES, *,
                         exit_together: bool = False) -> list[int]:
    """`count` processes that tell the time STEPS times and exit. `exit_together`: each
    planner's exit waits until every one has chosen its own, so all are still running (none
    has ended) when any exits."""
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    chosen: list[int] = []
    everyone = trio.Event()

    async def plan(history: Sequence[Observation]) -> CallTool | Exit:
        if len(history) < STEPS:
            return CallTool("now", {})
        chosen.append(len(chosen))
        if len(chosen) == count:
            everyone.set()
        await everyone.wait()
        return Exit(0)

    script = [CallTool("now", {})] * STEPS
    return [kernel.spawn("ticker", caps=["clock:*:read"], planner=ScriptedPlanner(
        plan if exit_together else script)) for _ in range(count)]


async def test_an_exit_is_on_disk_before_anyone_sees_it(kernel: Kernel, db_path: Path) -> None:
    other = sqlite3.connect(db_path)
    seen: dict[str, list[tuple[int, tuple[str, int]]]] = {"memory": [], "event": [],
                                                         "wait": []}
    pids = await _spawn_tickers(kernel)
    done = trio.Event()

    async def watch_memory() -> None:  # every scheduling round, as any task could look
        while not done.is_set():
            for pid in pids:
                if (kernel.process(pid).state == State.EXITED
                        and pid not in [p for p, _ in seen["memory"]]):
                    seen["memory"].append((pid, _on_disk(other, pid)))
            await trio.lowlevel.checkpoint()

    async def follow() -> None:
        async with kernel.events.follow() as events:
            async for event in events:
                if event["kind"] == "state" and event["data"]["new"] == "exited":
                    seen["event"].append((event["pid"], _on_disk(other, event["pid"])))
                    if len(seen["event"]) == PROCESSES:
                        return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_memory)
        nursery.start_soon(follow)
        await trio.sleep(0)  # (following before the first step)
        for pid in pids:
            status = await kernel.wait(pid)
            assert status["state"] == "exited" and status["exit_code"] == 0
            seen["wait"].append((pid, _on_disk(other, pid)))
        done.set()
    other.close()
    for how, looks in seen.items():
        assert sorted(pid for pid, _ in looks) == pids, how
        assert {disk for _, disk in looks} == {("exited", 1)}, (how, looks)
    assert kernel.verify_audit()[1] == []


async def test_exits_ride_on_the_group_commit(kernel: Kernel) -> None:
    """(The exits are chosen together: a process the others left behind, slower to step,
    would exit alone, in commits of its own, as it should.)"""
    statements: list[str] = []
    kernel.store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    pids = await _spawn_tickers(kernel, exit_together=True)
    for pid in pids:
        await kernel.wait(pid)
    kernel.store._db.set_trace_callback(None)  # type: ignore[attr-defined]
    ending = [t for t in _transactions(statements)
              if any(s.startswith("UPDATE processes SET state='exited'") for s in t)]
    ends = sum(s.startswith("UPDATE processes SET state='exited'") for t in ending for s in t)
    assert ends == PROCESSES
    # Each exit's event is in the transaction that ends it; and the exits of processes
    # stepping together share commits (alone, each took two commits of its own: its row,
    # then its event).
    for writes in ending:
        exited = [s for s in writes if s.startswith("UPDATE processes SET state='exited'")]
        events = [s for s in writes if s.startswith("INSERT INTO events") and
                  "exited" in s]
        assert len(events) == len(exited)
    assert len(ending) < PROCESSES


async def test_a_kill_while_the_exit_waits_finds_it_exited(kernel: Kernel,
                                                          db_path: Path) -> None:
    """The exit waits for a commit; a kill meanwhile lands it first (written at once), as if
    the exit had been written before the kill came: exited, not killed, and nothing of the
    kill written over it. (The kill as `proc.signal` of another process makes it, whose own
    records wait for the group commit too; an operator's kill is audited first, and that
    commit lands the exit already.)"""
    pids = await _spawn_tickers(kernel, 3)
    group = kernel.dispatcher.group
    real = group.durable
    killed: list[tuple[int, str, tuple[str, int]]] = []
    other = sqlite3.connect(db_path)

    async def kill_during_exit() -> None:
        proc = next((kernel.process(p) for p in pids if kernel.process(p).exiting), None)
        if proc is not None and not killed:
            assert proc.alive and _on_disk(other, proc.pid) == ("running", 0)
            kernel.terminate(proc.pid, "killed by 1")
            killed.append((proc.pid, proc.state.value, _on_disk(other, proc.pid)))
        await real()

    group.durable = kill_during_exit  # type: ignore[method-assign]
    statuses = [await kernel.wait(pid) for pid in pids]
    other.close()
    [(pid, state, disk)] = killed
    assert state == "exited" and disk == ("exited", 1)
    assert [s["state"] for s in statuses] == ["exited"] * 3
    assert kernel.store.get_process(pid)["state"] == "exited"
    states = [e["data"]["new"] for e in kernel.store.events(pid=pid) if e["kind"] == "state"]
    assert states[-1] == "exited" and "killed" not in states
    assert kernel.verify_audit()[1] == []


async def test_an_exit_with_an_open_request_closes_it_under_group_commit(
        kernel: Kernel) -> None:
    """A host's call of the process waits for a person when its planner exits, while another
    process steps too (so the exit would ride on a group commit): the request is cancelled,
    audited, with the exit, and the waiting call ends."""
    gate, bystander_gate = trio.Event(), trio.Event()

    async def plan(history: list[Any]) -> Any:
        await gate.wait()
        return CallTool("now", {}) if not history else __import__("broker").Exit(0)

    async def bystander(history: list[Any]) -> Any:
        await bystander_gate.wait()
        return __import__("broker").Exit(0)

    pid = await _proc(kernel, ScriptedPlanner(plan))
    other = kernel.spawn("agent", caps=["clock:*:read"], planner=ScriptedPlanner(bystander))
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(pid, "write_file",
                                                               {"path": "/out/a.txt",
                                                                "data": "hello"}))
        request = await _pending(kernel, pid)
        assert kernel.dispatcher.group.grouping  # both run under planners
        gate.set()  # the planner exits while the host's call waits
        assert (await kernel.wait(pid, timeout=5))["state"] == "exited"
        with trio.fail_after(5):  # the waiting call ends with its request
            while not results:
                await trio.sleep(0.01)
        bystander_gate.set()
        await kernel.wait(other, timeout=5)
    assert isinstance(results[0], Cancelled)
    [record] = _settled(kernel, request["id"])
    assert "exited" in record["detail"]["message"]
    assert kernel.store.get_process(pid)["state"] == "exited"
    assert kernel.verify_audit()[1] == []
