"""Red team (merged tree): an operator's control over a tree of processes whose store write
fails part way. `holds.control` writes `rejected` after `admin` when the act raises, so the act
must then have done nothing: a tree's pause, resume and kill write every process's holds and
moves in one transaction (a kill that failed on the target once had already ended its
children)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, Cancelled, Conflict, Kernel, LibosError
from tests.broker.kernel.test_step_commits import _transactions
from tests.conftest import open_image

ASK_WRITE = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}


@pytest.fixture
async def kernel(db_path: Path) -> AsyncIterator[Kernel]:
    async with Kernel.open(db_path) as k:
        yield k


def _fail_holds_of(db_path: Path, pid: int) -> sqlite3.Connection:
    other = sqlite3.connect(db_path, isolation_level=None)
    for verb, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
        other.execute(f"CREATE TRIGGER rt_{verb} BEFORE {verb} ON holds WHEN {row}.pid={pid} "
                      "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    return other


def _heal(other: sqlite3.Connection) -> None:
    for verb in ("INSERT", "UPDATE", "DELETE"):
        other.execute(f"DROP TRIGGER rt_{verb}")
    other.close()


# A kill's record is written with the rows it ends (lane loose): refused, only its refusal.
KILL_REFUSED = [("rejected", "CONFLICT")]


def _last_control(kernel: Kernel, pid: int) -> list[tuple[str, str | None]]:
    """The phases (and errors) of the last operator control on `pid` in the chain."""
    return [(r["phase"], r["detail"].get("error")) for r in kernel.audit(pid)
            if r["syscall"] == "proc.signal"][-2:]


async def _tree(kernel: Kernel) -> tuple[int, int]:
    await open_image(kernel)
    parent = kernel.spawn("agent", caps=["proc:agent:spawn"])
    child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": []})
    return parent, child


async def test_a_tree_pause_failing_on_a_child_is_not_recorded_rejected_while_done(
        kernel: Kernel, db_path: Path) -> None:
    parent, child = await _tree(kernel)
    other = _fail_holds_of(db_path, child)
    with pytest.raises(Conflict, match="disk full"):
        kernel.pause(parent)
    _heal(other)
    assert _last_control(kernel, parent) == [("admin", None), ("rejected", "CONFLICT")]
    assert kernel.verify_audit()[1] == []
    # The chain says the pause failed: then the target must not be held by it.
    assert kernel.store.holds_of(parent) == set(), "rejected, yet held by the operator"
    assert kernel.process(parent).state.value != "paused"


async def test_a_tree_resume_failing_on_a_child_lets_nothing_go(
        kernel: Kernel, db_path: Path) -> None:
    parent, child = await _tree(kernel)
    kernel.pause(parent)
    other = _fail_holds_of(db_path, child)
    with pytest.raises(Conflict, match="disk full"):
        kernel.resume(parent)
    _heal(other)
    assert _last_control(kernel, parent) == [("admin", None), ("rejected", "CONFLICT")]
    for pid in (parent, child):  # rejected: both still held, in the store and in memory
        assert kernel.store.holds_of(pid) == {"operator"} == kernel.process(pid).holds
        assert kernel.process(pid).state.value == "paused"
        assert kernel.store.get_process(pid)["state"] == "paused"
    kernel.resume(parent)  # the store healed: the same resume lets the whole tree go
    assert {kernel.process(p).state.value for p in (parent, child)} == {"runnable"}
    assert kernel.verify_audit()[1] == []


async def test_a_tree_pause_on_a_healthy_store_holds_the_whole_tree(kernel: Kernel) -> None:
    """The neighbour: the same tree paused and resumed with the store healthy."""
    parent, child = await _tree(kernel)
    kernel.pause(parent)
    assert kernel.store.holds_of(parent) and kernel.store.holds_of(child)
    kernel.resume(parent)
    assert kernel.store.holds_of(parent) == set() == kernel.store.holds_of(child)
    assert kernel.verify_audit()[1] == []


async def test_a_tree_kill_failing_on_the_target_kills_no_child(
        kernel: Kernel, db_path: Path) -> None:
    parent, child = await _tree(kernel)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute(f"CREATE TRIGGER rt_kill BEFORE UPDATE ON processes WHEN NEW.pid={parent} "
                  "AND NEW.state='killed' BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(Conflict, match="disk full"):
        kernel.kill(parent)
    other.execute("DROP TRIGGER rt_kill")
    other.close()
    assert _last_control(kernel, parent) == KILL_REFUSED
    assert kernel.process(parent).alive
    assert kernel.store.get_process(child)["state"] != "killed", \
        "the kill was rejected, yet the child is killed as its parent's"


def _fail_kill_of(db_path: Path, pid: int) -> sqlite3.Connection:
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute(f"CREATE TRIGGER rt_kill BEFORE UPDATE ON processes WHEN NEW.pid={pid} "
                  "AND NEW.state='killed' BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    return other


def _heal_kill(other: sqlite3.Connection) -> None:
    other.execute("DROP TRIGGER rt_kill")
    other.close()


async def _collect(results: list[Any], pid: int, kernel: Kernel) -> None:
    try:
        results.append(await kernel.call_tool(pid, "write_file", {"path": "/out/a.txt",
                                                                  "data": "x"}))
    except LibosError as exc:
        results.append(exc)


async def test_a_tree_kill_failing_on_a_child_part_way_kills_none_of_the_tree(
        kernel: Kernel, db_path: Path) -> None:
    """Children first: the first child's end (and its pending request's cancellation) is
    written before the second child's fails; all of it must be rolled back."""
    Path(kernel.fs.root, "out").mkdir()  # type: ignore[attr-defined]
    await open_image(kernel)
    parent = kernel.spawn("agent", caps=["proc:agent:spawn", ASK_WRITE])
    first, second = [await kernel.call_tool(parent, "spawn", {"image": "agent",
                                                              "caps": [ASK_WRITE]})
                      for _ in range(2)]
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, first, kernel)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        [request] = kernel.approvals()
        other = _fail_kill_of(db_path, second)
        with pytest.raises(Conflict, match="disk full"):
            kernel.kill(parent)
        _heal_kill(other)
        assert _last_control(kernel, parent) == KILL_REFUSED
        for pid in (parent, first, second):  # rejected: nobody killed, stored or in memory
            assert kernel.process(pid).alive, pid
            assert kernel.store.get_process(pid)["state"] != "killed", pid
        assert [r["id"] for r in kernel.approvals()] == [request["id"]]  # still pending
        assert not [r for r in kernel.audit() if r["detail"].get("state") == "cancelled"]
        await trio.sleep(0.05)
        assert results == []  # the first child's call still waits for its person
        kernel.kill(parent)  # the store healed: the same kill ends the whole tree
        with trio.fail_after(5):
            while not results:
                await trio.sleep(0.01)
    assert {kernel.store.get_process(p)["state"] for p in (parent, first, second)} == {
        "killed"}
    assert [type(r) for r in results] == [Cancelled]
    assert kernel.approvals() == []
    assert kernel.store.get_process(first)["reason"] == f"parent {parent} was killed (killed)"
    assert kernel.verify_audit()[1] == []


async def test_a_process_killing_a_tree_that_fails_on_its_target_kills_no_grandchild(
        kernel: Kernel, db_path: Path) -> None:
    """`proc.signal` kill from a process: the same one transaction."""
    await open_image(kernel)
    parent = kernel.spawn("agent", caps=["proc:agent:spawn"])
    child = await kernel.call_tool(parent, "spawn", {"image": "agent",
                                                     "caps": ["proc:agent:spawn"]})
    grandchild = await kernel.call_tool(child, "spawn", {"image": "agent", "caps": []})
    other = _fail_kill_of(db_path, child)
    with pytest.raises(LibosError):
        await kernel.call_tool(parent, "signal", {"pid": child, "signal": "kill"})
    _heal_kill(other)
    for pid in (child, grandchild):
        assert kernel.process(pid).alive, pid
        assert kernel.store.get_process(pid)["state"] != "killed", pid
    await kernel.call_tool(parent, "signal", {"pid": child, "signal": "kill"})
    assert [kernel.store.get_process(p)["state"] for p in (parent, child, grandchild)] == [
        "runnable", "killed", "killed"]
    assert kernel.verify_audit()[1] == []


async def test_a_tree_kill_on_a_healthy_store_ends_the_tree(kernel: Kernel) -> None:
    parent, child = await _tree(kernel)
    kernel.kill(parent)
    assert {kernel.store.get_process(p)["state"] for p in (parent, child)} == {"killed"}
    assert kernel.verify_audit()[1] == []


async def test_a_tree_kill_lands_a_childs_waiting_exit_first(kernel: Kernel,
                                                            db_path: Path) -> None:
    """A child whose exit waits for the group commit when its parent's tree is killed: the
    exit lands first (exited, not killed over it); the rest of the tree ends in the kill."""
    await open_image(kernel)
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",),
                                           planner={"kind": "scripted", "actions": [
                                               {"tool": "now", "args": {}}] * 3}))
    parent = kernel.spawn("agent", caps=["proc:ticker:spawn", "clock:*:read"])
    children = [await kernel.call_tool(parent, "spawn", {"image": "ticker",
                                                         "caps": ["clock:*:read"]})
                for _ in range(4)]
    group = kernel.dispatcher.group
    real = group.durable
    landed: list[tuple[int, str]] = []

    async def kill_during_exit() -> None:
        proc = next((kernel.process(p) for p in children if kernel.process(p).exiting), None)
        if proc is not None and not landed:
            kernel.terminate(parent, "killed by host")
            landed.append((proc.pid, proc.state.value))
        await real()

    group.durable = kill_during_exit  # type: ignore[method-assign]
    statuses = {pid: await kernel.wait(pid) for pid in children}
    [(pid, state)] = landed
    assert state == "exited" == statuses[pid]["state"] == kernel.store.get_process(pid)["state"]
    assert kernel.store.get_process(parent)["state"] == "killed"
    for other, status in statuses.items():
        stored = kernel.store.get_process(other)
        assert (stored["state"], stored["reason"]) == (status["state"], status["reason"])
        assert status["state"] == "exited" or status["reason"] == (
            f"parent {parent} was killed (killed by host)")
    states = [e["data"]["new"] for e in kernel.store.events(pid=pid) if e["kind"] == "state"]
    assert states[-1] == "exited" and "killed" not in states
    assert kernel.verify_audit()[1] == []


async def test_a_tree_kill_stores_its_state_events_in_one_commit(kernel: Kernel) -> None:
    """The tree's ends are one transaction; their `state` events then took one commit a
    process (a tree of a thousand: a thousand commits after the kill). Now one, in the
    order of the ends (children first), each its own process's."""
    await open_image(kernel)
    parent = kernel.spawn("agent", caps=["proc:agent:spawn"])
    children = [await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": []})
                for _ in range(4)]
    statements: list[str] = []
    kernel.store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    kernel.kill(parent)
    kernel.store._db.set_trace_callback(None)  # type: ignore[attr-defined]
    with_events = [t for t in _transactions(statements)
                   if any(s.startswith("INSERT INTO events") for s in t)]
    assert len(with_events) == 1
    killed = [e["pid"] for e in kernel.store.events()
              if e["kind"] == "state" and e["data"]["new"] == "killed"]
    assert sorted(killed) == [parent, *children] and killed[-1] == parent
