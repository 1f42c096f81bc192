"""Checkpoints at step boundaries, restart from them, fork, and settling a step a crash cut
off: run again when it touched nothing, shown as `outcome unknown` when it may have."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from broker import CallTool, Kernel, NotCapable
from broker.kernel.recovery import capture
from broker.store import AuditRecord
from tests.broker.kernel.crashing import let_go_as_a_crash
from tests.conftest import open_image

SCRIPT = [
    {"tool": "write_file", "args": {"path": "/w/a.txt", "data": "a"}},
    {"tool": "sleep", "args": {"seconds": 3600}},
    {"tool": "write_file", "args": {"path": "/w/b.txt", "data": "b"}},
    {"exit": 0, "result": "done"},
]
CAPS = ["fs:/w/**:read,write", "clock:*:sleep,read"]


async def _scripted(kernel: Kernel) -> int:
    await open_image(kernel, "job", planner={"kind": "scripted", "actions": SCRIPT})
    (Path(kernel.fs.root) / "w").mkdir(exist_ok=True)  # type: ignore[attr-defined]
    return kernel.spawn("job", caps=CAPS)


async def test_every_step_boundary_is_checkpointed(kernel: Kernel) -> None:
    pid = await _scripted(kernel)
    await trio.testing.wait_all_tasks_blocked()
    checkpoint = kernel.store.checkpoint(pid)
    assert checkpoint["step"] == 1
    assert checkpoint["state"]["pending"] == {"tool": "sleep", "args": {"seconds": 3600}}
    assert checkpoint["state"]["usage"]["steps"] == 2
    assert [o["action"]["tool"] for o in kernel.store.observations(pid)] == ["write_file"]


async def test_a_restarted_broker_resumes_from_the_checkpoint(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        pid = await _scripted(kernel)
        await trio.testing.wait_all_tasks_blocked()  # asleep in step 1
    async with Kernel.open(db_path) as kernel:
        # The sleep touched nothing, so it runs again instead of being reported unknown.
        await trio.testing.wait_all_tasks_blocked()
        proc = kernel.process(pid)
        assert [o.action.name for o in proc.history] == ["write_file"]
        assert proc.state.value == "waiting"
        sleeps = [r for r in kernel.audit(pid) if r["syscall"] == "clock.sleep"
                  and r["phase"] == "intent"]
        assert len(sleeps) == 2
        writes = [r for r in kernel.audit(pid) if r["syscall"] == "fs.write"
                  and r["phase"] == "intent"]
        assert len(writes) == 1  # a.txt was not written again
        kernel.kill(pid, "test over")


async def test_a_cut_off_effect_is_reported_not_repeated(db_path: Path) -> None:
    # A crash in the middle of a write: the intent is durable, the outcome is not. Build that
    # state exactly as a SIGKILL leaves it (the crash harness does it for real).
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "job", planner={})
        pid = kernel.spawn("job", caps=CAPS)
        proc = kernel.process(pid)
        action = CallTool("write_file", {"path": "/w/c.txt", "data": "c"})
        state = capture(proc, action)
        state["audit_from"] = kernel.store.head_seq
        kernel.store.save_checkpoint(pid, 0, state)
        call = kernel.store.append_audit(AuditRecord("intent", "tool.call", pid=pid,
                                                     resource="write_file"))
        # The write's invocation is the call's (an invocation's id is its intent's seq).
        kernel.store.append_audit(AuditRecord("intent", "fs.write", pid=pid, inv=call,
                                              resource="/w/c.txt"))
        kernel.store.update_process(pid, state="running")
        kernel.store.set_meta("recovered_through", "0")
        kernel.store.close = lambda: None  # type: ignore[method-assign]  # "crash": no clean close
    let_go_as_a_crash(kernel.store)
    async with Kernel.open(db_path) as kernel:
        proc = kernel.process(pid)
        assert proc.state.value == "runnable"
        assert proc.history[-1].error["code"] == "CANCELLED"
        assert "outcome unknown" in proc.history[-1].error["message"]
        assert "fs.write" in proc.history[-1].error["message"]
        unknown = [r for r in kernel.audit(pid) if r["detail"].get("unknown")]
        assert {r["syscall"] for r in unknown} == {"tool.call", "fs.write"}
        assert kernel.verify_audit()[1] == []
        # Nothing was run again.
        assert not (Path(kernel.fs.root) / "w" / "c.txt").exists()  # type: ignore[attr-defined]


async def test_pause_and_resume_across_a_restart(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "ticker", planner={"kind": "scripted", "actions": [
            {"tool": "now", "args": {}}] * 3})
        pid = kernel.spawn("ticker", caps=["clock:*:read"])
        kernel.pause(pid)
    async with Kernel.open(db_path) as kernel:
        await trio.testing.wait_all_tasks_blocked()
        assert kernel.process(pid).state.value == "paused"
        assert kernel.process(pid).history == []
        kernel.resume(pid)
        status = await kernel.wait(pid, timeout=5)
        assert status["state"] == "exited" and len(kernel.process(pid).history) == 3


async def test_fork_from_a_checkpoint(kernel: Kernel) -> None:
    pid = await _scripted(kernel)
    await trio.testing.wait_all_tasks_blocked()
    fork = kernel.fork(pid, caps=["fs:/w/**:read,write", "clock:*:sleep"])
    info = kernel.process_info(fork)
    assert info["parent"] == pid and info["lineage"] == [pid]
    forked = kernel.process(fork)
    assert [o.action.name for o in forked.history] == ["write_file"]
    held = {(c["kind"], c["scope"], tuple(c["rights"])) for c in kernel.capabilities(fork)}
    assert ("fs", "/w/**", ("read", "write")) in held
    assert all(c.get("parent") for c in kernel.capabilities(fork) if c["kind"] != "obj")
    await trio.testing.wait_all_tasks_blocked()
    assert forked.state.value == "waiting"  # it, too, runs the interrupted sleep
    with pytest.raises(NotCapable):
        kernel.fork(pid, caps=["fs:/**:read"])
    kernel.kill(pid)


async def test_a_pause_asked_mid_step_is_answered_by_one_resume_across_restarts(
        db_path: Path) -> None:
    actions = [{"tool": "sleep", "args": {"seconds": 0.3}}, {"tool": "now", "args": {}}]
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "s", planner={"kind": "scripted", "actions": actions})
        pid = kernel.spawn("s", caps=["clock:*:read,sleep"])
        await trio.sleep(0.1)
        kernel.pause(pid)  # mid-step: taken at the boundary
        with trio.fail_after(5):
            while kernel.process(pid).state.value != "paused":
                await trio.sleep(0.01)
    async with Kernel.open(db_path) as kernel:
        kernel.resume(pid)
        status = await kernel.wait(pid, timeout=5)
        assert status["state"] == "exited"


async def test_an_embedders_planner_gets_its_checkpointed_state(db_path: Path) -> None:
    class Counting:
        def __init__(self) -> None:
            self.asked = 0

        async def next_action(self, history: list) -> object:
            self.asked += 1
            if self.asked == 1:
                return CallTool("sleep", {"seconds": 0.3})
            return __import__("broker").Exit(0, len(history))

        def snapshot(self) -> dict:
            return {"asked": self.asked}

        def restore(self, state: dict) -> None:
            self.asked = state["asked"]

    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["clock:*:sleep"], planner=Counting())
        await trio.testing.wait_all_tasks_blocked()
    async with Kernel.open(db_path, planners=lambda image, p: Counting()) as kernel:
        status = await kernel.wait(pid, timeout=5)
        # It carried on from its checkpointed state: the interrupted sleep ran again, and
        # the planner, knowing it had asked once, ended instead of sleeping a second time.
        assert status["state"] == "exited" and status["result"] == 1


async def test_a_restart_does_not_renew_the_wall_time_budget(db_path: Path) -> None:
    from broker import Budget, FakeClock

    clock = FakeClock()
    async with Kernel.open(db_path, clock=clock) as kernel:
        await open_image(kernel, "slow", budget=Budget(wall_seconds=100),
                         planner={"kind": "scripted", "actions": [
                             {"tool": "now", "args": {}}] * 3})
        kernel.pause(pid := kernel.spawn("slow", caps=["clock:*:read"]))
    clock.advance(150)  # the broker was down longer than the whole budget
    async with Kernel.open(db_path, clock=clock) as kernel:
        kernel.resume(pid)
        status = await kernel.wait(pid, timeout=5)
        assert status["state"] == "killed" and "wall time" in status["reason"]
