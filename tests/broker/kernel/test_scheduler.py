"""The trio scheduler: many processes at once, budgets that end them, child spending that
counts against the parent, events that can be followed."""

from __future__ import annotations

import trio

from broker import Budget, CallTool, Exit, Kernel, ScriptedPlanner
from tests.conftest import open_image


async def test_many_processes_run_concurrently(kernel: Kernel) -> None:
    await open_image(kernel)
    pids = [kernel.spawn("agent", caps=["clock:*:read,sleep"], planner=ScriptedPlanner([
        CallTool("sleep", {"seconds": 0.2}), CallTool("now", {})])) for _ in range(50)]
    start = trio.current_time()
    for pid in pids:
        assert (await kernel.wait(pid))["exit_code"] == 0
    # 50 sleeps of 0.2 s overlap: serial would take 10 s.
    assert trio.current_time() - start < 5


async def test_tool_call_budget_kills_with_limit_exceeded(kernel: Kernel) -> None:
    await open_image(kernel, budget=Budget(tool_calls=2))
    pid = kernel.spawn("agent", caps=["clock:*:read"],
                       planner=ScriptedPlanner([CallTool("now", {})] * 5))
    status = await kernel.wait(pid, timeout=5)
    assert status["state"] == "killed"
    assert "LimitExceeded" in status["reason"] and "tool_calls" in status["reason"]
    assert len(kernel.process(pid).history) == 3
    assert kernel.process(pid).history[-1].error["code"] == "LIMIT_EXCEEDED"


async def test_syscall_budget_of_a_parent_counts_its_childrens_spending(kernel: Kernel) -> None:
    await open_image(kernel, "worker", planner={"kind": "scripted", "actions": [
        {"tool": "now", "args": {}}] * 10})
    await open_image(kernel, "lead", budget=Budget(syscalls=6))
    lead = kernel.spawn("lead", caps=["proc:worker:spawn", "clock:*:read"])
    child = await kernel.call_tool(lead, "spawn", {"image": "worker", "caps": ["clock:*:read"]})
    status = await kernel.wait(child, timeout=5)
    # The child's own image has no budget, yet it is stopped by its parent's.
    assert status["state"] == "killed"
    assert status["reason"] == (
        f"parent {lead} was killed (LimitExceeded: syscalls budget (6) spent)")
    assert kernel.process(lead).state.value == "killed"
    errors = [o.error for o in kernel.process(child).history if o.error]
    assert errors and errors[-1]["code"] == "LIMIT_EXCEEDED"
    assert f"ancestor {lead}" in errors[-1]["message"]
    assert kernel.process(lead).usage.syscalls >= 6


async def test_wall_time_budget(kernel: Kernel) -> None:
    await open_image(kernel, budget=Budget(wall_seconds=0.2))
    pid = kernel.spawn("agent", caps=["clock:*:sleep"],
                       planner=ScriptedPlanner([CallTool("sleep", {"seconds": 60})]))
    status = await kernel.wait(pid, timeout=5)
    assert status["state"] == "killed" and "wall time" in status["reason"]


async def test_events_can_be_followed_live(kernel: Kernel) -> None:
    await open_image(kernel)
    seen: list[tuple[str, int | None]] = []
    async with kernel.events.follow() as events:
        pid = kernel.spawn("agent", caps=[], planner=ScriptedPlanner([
            CallTool("read_file", {"path": "/nope"}), Exit(3)]))
        async for event in events:
            seen.append((event["kind"], event["pid"]))
            if event["kind"] == "state" and event["data"]["new"] == "exited":
                break
    assert ("spawn", pid) in seen and ("denied", pid) in seen
    assert kernel.process(pid).exit_code == 3
    stored = [e["kind"] for e in kernel.store.events(pid=pid)]
    assert stored.count("denied") == 1


async def test_a_failing_planner_ends_its_process_not_the_kernel(kernel: Kernel) -> None:
    await open_image(kernel)

    def broken(history: list) -> object:
        raise RuntimeError("model returned garbage")

    bad = kernel.spawn("agent", planner=ScriptedPlanner(broken))
    good = kernel.spawn("agent", caps=["clock:*:read"],
                        planner=ScriptedPlanner([CallTool("now", {})]))
    assert (await kernel.wait(bad))["exit_code"] == 1
    assert (await kernel.wait(good))["exit_code"] == 0


async def test_a_follower_that_closed_its_end_is_dropped_and_others_still_see_events(
        kernel: Kernel) -> None:
    """A follower whose receiving end is closed while it is still registered (its `aclose`
    pauses before `follow` lets go of it) is dropped: sending to it must not fail the
    process that published, nor keep the event from the followers beside it."""
    await open_image(kernel)
    async with kernel.events.follow() as gone, kernel.events.follow() as events:
        await gone.aclose()
        pid = kernel.spawn("agent", caps=[], planner=ScriptedPlanner([Exit(4)]))
        with trio.fail_after(10):
            async for event in events:
                if event["kind"] == "state" and event["data"]["new"] == "exited":
                    break
    status = await kernel.wait(pid, timeout=5)
    assert status["state"] == "exited" and kernel.process(pid).exit_code == 4


async def test_a_process_whose_steps_never_wait_still_lets_others_run(kernel: Kernel) -> None:
    """Alone, a process's steps commit without waiting (no group to gather): its step
    boundaries are then where it yields, so the broker's other tasks (here, this test's)
    run between its steps. (Boundaries after a step that did wait only check cancellation.)"""
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["clock:*:read"],
                       planner=ScriptedPlanner([CallTool("now", {})] * 100))
    seen: list[int] = []
    while kernel.process(pid).alive:
        await trio.lowlevel.checkpoint()
        seen.append(len(kernel.process(pid).history))
    assert (await kernel.wait(pid))["exit_code"] == 0
    assert len(set(seen)) > 50, f"it ran {len(set(seen))} times between its 100 steps"
