"""An operator's controls are holds: a pause reaches the whole subtree, no process can lift the
operator's pause (nor one a process above it placed), and every control is in the audit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Conflict, Kernel, NotCapable, NotFound
from tests.conftest import open_image

TICKS = [{"tool": "sleep", "args": {"seconds": 0.02}}] * 2000
SLEEP = "clock:*:sleep"


async def _images(kernel: Kernel) -> None:
    # A ticker steps for ever; a tree spawns a ticker first; an agent is driven by the host.
    await open_image(kernel, "ticker", tools=("sleep",), needs=(SLEEP,),
                     planner={"kind": "scripted", "actions": TICKS})
    await open_image(kernel, "tree", tools=("sleep", "spawn"), needs=(SLEEP, "proc:*:spawn"),
                     planner={"kind": "scripted", "actions": [
                         {"tool": "spawn", "args": {"image": "ticker", "caps": [SLEEP]}},
                         *TICKS]})
    await open_image(kernel, "agent", tools=("spawn", "signal", "sleep"),
                     needs=(SLEEP, "proc:*:spawn"))


async def _family(kernel: Kernel) -> tuple[int, int, int]:
    """parent (host-driven) → child (a tree) → grandchild (a ticker)."""
    await _images(kernel)
    parent = kernel.spawn("agent", caps=[SLEEP, "proc:tree:spawn", "proc:agent:spawn",
                                         "proc:ticker:spawn"])
    child = await kernel.call_tool(parent, "spawn", {
        "image": "tree", "caps": [SLEEP, "proc:ticker:spawn"]})
    with trio.fail_after(5):
        while not kernel.process(child).children:
            await trio.sleep(0.01)
    return parent, child, kernel.process(child).children[0]


async def _state(kernel: Kernel, pid: int, state: str) -> None:
    with trio.fail_after(5):
        while kernel.process(pid).state.value != state:
            await trio.sleep(0.01)


async def _steps(kernel: Kernel, *pids: int) -> list[bool]:
    """Whether each process takes steps over a short while."""
    before = [len(kernel.process(p).history) for p in pids]
    await trio.sleep(0.3)
    return [len(kernel.process(p).history) > n for p, n in zip(pids, before, strict=True)]


def _controls(kernel: Kernel, after: int = 0) -> list[dict[str, Any]]:
    return [r for r in kernel.audit()[after:] if r["syscall"] == "proc.signal"
            and r["phase"] in ("admin", "rejected")]


def _refusals(kernel: Kernel, pid: int, after: int) -> list[dict[str, Any]]:
    return [r for r in kernel.audit()[after:] if r["syscall"] == "proc.signal"
            and r["phase"] == "denied" and r["pid"] == pid]


async def test_a_parent_cannot_lift_the_operators_pause(kernel: Kernel) -> None:
    parent, child, grandchild = await _family(kernel)
    kernel.pause(child)
    await _state(kernel, child, "paused")
    await _state(kernel, grandchild, "paused")  # the pause reaches the descendants
    assert await _steps(kernel, child, grandchild) == [False, False]
    [pause] = _controls(kernel)
    assert pause["phase"] == "admin" and pause["pid"] == child
    assert pause["detail"] == {"signal": "pause", "who": "host"}

    before = len(kernel.audit())
    with pytest.raises(NotCapable, match="held by the operator"):
        await kernel.call_tool(parent, "signal", {"pid": child, "signal": "resume"})
    [refused] = _refusals(kernel, parent, before)
    assert refused["detail"]["error"] == "NOT_CAPABLE" and refused["resource"] == str(child)
    # Refused in the check: no intent, nothing done.
    assert not [r for r in kernel.audit()[before:] if r["phase"] == "intent"
                and r["syscall"] == "proc.signal"]
    assert kernel.process(child).state.value == "paused"
    assert await _steps(kernel, child, grandchild) == [False, False]

    # The neighbours: the operator lets it go (audited), and the parent's own pause and
    # resume of its child work as before, for the whole subtree.
    kernel.resume(child)
    assert await _steps(kernel, child, grandchild) == [True, True]
    assert _controls(kernel)[-1]["detail"] == {"signal": "resume", "who": "host"}
    await kernel.call_tool(parent, "signal", {"pid": child, "signal": "pause"})
    await _state(kernel, child, "paused")
    await _state(kernel, grandchild, "paused")
    await kernel.call_tool(parent, "signal", {"pid": child, "signal": "resume"})
    assert await _steps(kernel, child, grandchild) == [True, True]
    assert kernel.verify_audit()[1] == []


async def test_a_hold_placed_above_a_process_is_not_its_to_lift(kernel: Kernel) -> None:
    await _images(kernel)
    top = kernel.spawn("agent", caps=[SLEEP, "proc:*:spawn"])
    middle = await kernel.call_tool(top, "spawn", {"image": "agent",
                                                   "caps": [SLEEP, "proc:ticker:spawn"]})
    leaf = await kernel.call_tool(middle, "spawn", {"image": "ticker", "caps": [SLEEP]})
    await kernel.call_tool(top, "signal", {"pid": leaf, "signal": "pause"})
    await _state(kernel, leaf, "paused")
    before = len(kernel.audit())
    with pytest.raises(NotCapable, match=f"pid:{top}"):
        await kernel.call_tool(middle, "signal", {"pid": leaf, "signal": "resume"})
    assert _refusals(kernel, middle, before)
    assert kernel.process(leaf).state.value == "paused"
    # The one that placed it lifts it; and a process above lifts what one below placed.
    await kernel.call_tool(top, "signal", {"pid": leaf, "signal": "resume"})
    assert await _steps(kernel, leaf) == [True]
    await kernel.call_tool(middle, "signal", {"pid": leaf, "signal": "pause"})
    await _state(kernel, leaf, "paused")
    await kernel.call_tool(top, "signal", {"pid": leaf, "signal": "resume"})
    assert await _steps(kernel, leaf) == [True]


async def test_a_child_spawned_under_a_hold_is_held(kernel: Kernel) -> None:
    await _images(kernel)
    parent = kernel.spawn("agent", caps=[SLEEP, "proc:ticker:spawn"])
    kernel.pause(parent)
    assert kernel.process(parent).state.value == "paused"
    # The host may still call a paused process's tools; what it starts is held as well.
    child = await kernel.call_tool(parent, "spawn", {"image": "ticker", "caps": [SLEEP]})
    assert kernel.process(child).state.value == "paused"
    assert await _steps(kernel, child) == [False]
    with pytest.raises(NotCapable):
        await kernel.call_tool(parent, "signal", {"pid": child, "signal": "resume"})
    kernel.resume(parent)  # the operator's resume lifts its holds below the named process
    assert await _steps(kernel, child) == [True]


async def test_holds_survive_a_restart(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        parent, child, grandchild = await _family(kernel)
        await kernel.call_tool(parent, "signal", {"pid": child, "signal": "pause"})
        kernel.pause(grandchild)
        await _state(kernel, grandchild, "paused")
    async with Kernel.open(db_path) as kernel:
        assert kernel.process(child).state.value == "paused"
        assert kernel.process(grandchild).holds == {"operator", f"pid:{parent}"}
        await kernel.call_tool(parent, "signal", {"pid": child, "signal": "resume"})
        assert await _steps(kernel, child) == [True]
        with pytest.raises(NotCapable):  # the operator's hold on the grandchild stays
            await kernel.call_tool(parent, "signal", {"pid": grandchild, "signal": "resume"})
        assert await _steps(kernel, grandchild) == [False]
        kernel.resume(grandchild)
        assert await _steps(kernel, grandchild) == [True]


async def test_every_control_is_on_the_record(kernel: Kernel) -> None:
    parent, child, grandchild = await _family(kernel)
    before = len(kernel.audit())
    with pytest.raises(Conflict):
        kernel.resume(child)  # not paused
    with pytest.raises(NotFound):
        kernel.kill(424242)
    kernel.kill(child, "done with it")
    await _state(kernel, grandchild, "killed")
    with pytest.raises(Conflict):
        kernel.pause(child)  # killed
    records = [(r["phase"], r["resource"], r["detail"]["signal"], r["detail"].get("error"))
               for r in _controls(kernel, before)]
    assert records == [("rejected", str(child), "resume", "CONFLICT"),
                       ("rejected", "424242", "kill", "NOT_FOUND"),
                       ("admin", str(child), "kill", None),
                       ("rejected", str(child), "pause", "CONFLICT")]
    assert kernel.process(parent).alive  # the neighbour above is untouched
    assert kernel.verify_audit()[1] == []


async def _orphan(kernel: Kernel) -> tuple[int, int, int]:
    """parent (host-driven) → child (spawns a ticker, then exits) → grandchild (a ticker)."""
    await _images(kernel)
    await open_image(kernel, "orphaner", tools=("spawn",), needs=(SLEEP, "proc:*:spawn"),
                     planner={"kind": "scripted", "actions": [
                         {"tool": "spawn", "args": {"image": "ticker", "caps": [SLEEP]}}]})
    parent = kernel.spawn("agent", caps=[SLEEP, "proc:orphaner:spawn", "proc:ticker:spawn"])
    child = await kernel.call_tool(parent, "spawn", {
        "image": "orphaner", "caps": [SLEEP, "proc:ticker:spawn"]})
    with trio.fail_after(5):
        await kernel.wait(child)
    [grandchild] = kernel.process(child).children
    assert kernel.process(child).state.value == "exited"
    assert kernel.process(grandchild).alive  # left running by its parent's end
    return parent, child, grandchild


async def test_a_kill_reaches_a_live_grandchild_whose_parent_has_ended(kernel: Kernel) -> None:
    """A child may end and leave its own child running: the grandparent's kill (the operator's
    or its own) still reaches that grandchild, as a pause does; a process cannot slip out of
    its ancestors' control by spawning through a child that exits."""
    parent, child, grandchild = await _orphan(kernel)
    neighbour = kernel.spawn("ticker", caps=[SLEEP])  # outside the tree: untouched
    kernel.kill(parent)
    assert kernel.store.get_process(grandchild)["state"] == "killed"
    assert kernel.process(grandchild).reason == f"ancestor {parent} was killed (killed)"
    assert kernel.process(neighbour).alive
    assert kernel.process(child).state.value == "exited"  # an ended process stays as it ended


async def test_after_a_restart_a_kill_still_reaches_the_grandchild_of_an_ended_child(
        db_path: Path) -> None:
    """A restart loads live processes (and, for budgets and the descendant bound, their
    ended ancestors: the child, as it ended): the kill still finds the grandchild."""
    async with Kernel.open(db_path) as kernel:
        parent, child, grandchild = await _orphan(kernel)
    async with Kernel.open(db_path) as kernel:
        assert kernel.process(child).state.value == "exited"
        assert kernel.process(grandchild).alive
        kernel.kill(parent)
        assert kernel.store.get_process(grandchild)["state"] == "killed"
        assert kernel.process(grandchild).reason == f"ancestor {parent} was killed (killed)"
