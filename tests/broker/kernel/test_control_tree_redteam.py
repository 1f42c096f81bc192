"""Red team (merged tree): an operator's control over a tree of processes whose store write
fails part way. `holds.control` writes `rejected` after `admin` when the act raises, so the act
must then have done nothing: a tree's pause and resume write every process's holds and moves in
one transaction. `kill` still acts on a whole tree one commit per process (its strict xfail): a
kill that fails on the target has already ended its children."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import Conflict, Kernel
from tests.conftest import open_image


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
    signals = [(r["phase"], r["detail"].get("error")) for r in kernel.audit(parent)
               if r["syscall"] == "proc.signal"]
    assert signals[-2:] == [("admin", None), ("rejected", "CONFLICT")]
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
    signals = [(r["phase"], r["detail"].get("error")) for r in kernel.audit(parent)
               if r["syscall"] == "proc.signal"]
    assert signals[-2:] == [("admin", None), ("rejected", "CONFLICT")]
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


@pytest.mark.xfail(strict=True, reason="a tree kill ends the children first, one commit each: "
                   "when the target's own end fails the chain says the kill was rejected, "
                   "yet its children are killed (durably) 'because parent was killed', and "
                   "the target lives")
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
    signals = [(r["phase"], r["detail"].get("error")) for r in kernel.audit(parent)
               if r["syscall"] == "proc.signal"]
    assert signals[-2:] == [("admin", None), ("rejected", "CONFLICT")]
    assert kernel.process(parent).alive
    assert kernel.store.get_process(child)["state"] != "killed", \
        "the kill was rejected, yet the child is killed as its parent's"


async def test_a_tree_kill_on_a_healthy_store_ends_the_tree(kernel: Kernel) -> None:
    parent, child = await _tree(kernel)
    kernel.kill(parent)
    assert {kernel.store.get_process(p)["state"] for p in (parent, child)} == {"killed"}
    assert kernel.verify_audit()[1] == []
