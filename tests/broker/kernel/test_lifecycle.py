"""Process lifecycle: only legal transitions, stored and evented; pause/resume/kill."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from broker import CallTool, Conflict, Kernel, NotFound, ScriptedPlanner, State
from broker.kernel.process import TRANSITIONS
from tests.conftest import open_image


def test_every_illegal_transition_is_a_conflict() -> None:
    from broker.caps import CapabilityTable
    from broker.kernel import AgentImage, AgentProcess

    for start, legal in TRANSITIONS.items():
        for target in State:
            proc = AgentProcess(1, None, AgentImage("x"), CapabilityTable(1), state=start)
            if target in legal:
                proc.move(target)
                assert proc.state == target
            else:
                with pytest.raises(Conflict):
                    proc.move(target)
                assert proc.state == start


async def test_states_are_stored_and_evented(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["clock:*:read"],
                       planner=ScriptedPlanner([CallTool("now", {})]))
    status = await kernel.wait(pid)
    assert status["state"] == "exited" and status["exit_code"] == 0
    assert kernel.store.get_process(pid)["state"] == "exited"
    moves = [(e["data"]["old"], e["data"]["new"])
             for e in kernel.store.events(pid=pid) if e["kind"] == "state"]
    # Running from step to step: the store is written when the state changes, not per step.
    assert moves == [("created", "runnable"), ("runnable", "running"), ("running", "exited")]


async def test_pause_holds_a_process_at_a_step_boundary_until_resumed(kernel: Kernel) -> None:
    await open_image(kernel)
    gate = trio.Event()

    async def plan(history: list) -> object:
        if not history:
            await gate.wait()
            return CallTool("now", {})
        return CallTool("now", {}) if len(history) < 3 else __import__("broker").Exit(0)

    pid = kernel.spawn("agent", caps=["clock:*:read"], planner=ScriptedPlanner(plan))
    await trio.testing.wait_all_tasks_blocked()
    kernel.pause(pid)  # mid-step (the planner is thinking): takes effect at the boundary
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    proc = kernel.process(pid)
    assert proc.state == State.PAUSED
    steps = len(proc.history)
    await trio.sleep(0.05)
    assert len(proc.history) == steps  # nothing runs while paused
    kernel.resume(pid)
    assert (await kernel.wait(pid, timeout=5))["state"] == "exited"
    assert len(proc.history) == 3
    with pytest.raises(Conflict):
        kernel.resume(pid)


async def test_kill_cancels_in_flight_work_and_kills_descendants(kernel: Kernel) -> None:
    await open_image(kernel, "sleeper", planner={"kind": "scripted", "actions": [
        {"tool": "sleep", "args": {"seconds": 3600}}]})
    await open_image(kernel)
    parent = kernel.spawn("agent", caps=["proc:sleeper:spawn", "clock:*:sleep"])
    child = await kernel.call_tool(parent, "spawn", {"image": "sleeper",
                                                     "caps": ["clock:*:sleep"]})
    await trio.testing.wait_all_tasks_blocked()
    assert kernel.process(child).state == State.WAITING
    kernel.kill(parent, "operator")
    status = await kernel.wait(child, timeout=5)
    assert status["state"] == "killed" and "parent" in status["reason"]
    assert kernel.process(parent).state == State.KILLED
    outcome = [r for r in kernel.audit(child) if r["syscall"] == "clock.sleep"][-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["ok"] is False


async def test_unknown_pid_is_not_found(kernel: Kernel) -> None:
    for pid in (999, -1, "1", None):
        with pytest.raises(NotFound):
            await kernel.call_tool(pid, "now", {})  # type: ignore[arg-type]


async def test_exited_process_refuses_calls(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["clock:*:read"], planner=ScriptedPlanner([]))
    await kernel.wait(pid)
    with pytest.raises(Conflict):
        await kernel.call_tool(pid, "now", {})
