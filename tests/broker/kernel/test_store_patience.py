"""A store that never heals (`broker.kernel.faults.until_stored`): a process whose end cannot
be written tried for ever, and whoever waited for it waited for ever. Now it tries for
`STORE_PATIENCE` seconds, then stops with a typed error (`StoreGaveUp`, a `Conflict`) that
`wait` raises; nothing of the end is stored or shown, the broker and the other processes go
on, and a broker that opens the healed store resumes the process and ends it. Real SQLite
made to fail by a trigger (`faulty_store`); a fake only for trio's clock (autojump)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from broker import AgentImage, Conflict, Exit, Kernel, ScriptedPlanner
from broker.kernel import faults
from broker.kernel.faults import StoreGaveUp
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_store_faults import _lines, _NowInAFault


async def test_an_end_the_store_never_takes_is_a_typed_error_and_nothing_is_lost(
        autojump_clock: trio.abc.Clock, db_path: Path, fault: Fault,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(faults, "STORE_PATIENCE", 60.0)
    image = AgentImage("clock", tools=("now",), needs=("clock:*:read",))
    async with Kernel.open(db_path) as kernel:
        fault.install("audit", updates=("processes",))
        await kernel.register_image(image)
        other = kernel.spawn("clock", caps=["clock:*:read"], planner=None)  # (host-driven)
        pid = kernel.spawn("clock", caps=["clock:*:read"], planner=_NowInAFault(fault))
        with trio.fail_after(600):
            with pytest.raises(Conflict) as caught:
                await kernel.wait(pid)
            gave_up_at = trio.current_time()
        assert isinstance(caught.value, StoreGaveUp) and "disk full" in caught.value.message
        assert gave_up_at <= 2 * 60.0 + 10  # (its own end, then the error's end: 60 s each)
        assert kernel.process(pid).alive  # nothing shows an end that is not stored
        assert fault.count("SELECT COUNT(*) FROM processes WHERE pid=? AND state IN "
                           "('exited', 'killed')", pid) == 0
        assert len(_lines(caplog, f"ending process {pid} failed")) == 1
        assert not [r for r in caplog.records if r.exc_info]  # typed, no traceback
        fault.set(False)
        assert await kernel.call_tool(other, "now", {})  # the broker goes on
    async with Kernel.open(db_path, planners=lambda *_: ScriptedPlanner([Exit(0)])) as kernel:
        # healed: resumed from its last checkpoint, it ends
        with trio.fail_after(600):
            status = await kernel.wait(pid)
        assert status["state"] == "exited"
        assert kernel.verify_audit()[1] == []


class _Gated:
    """A planner that exits once `gate` is set (its process runs meanwhile)."""

    def __init__(self) -> None:
        self.gate = trio.Event()

    async def next_action(self, history: object) -> Exit:
        await self.gate.wait()
        return Exit(0, "attached")


async def test_a_process_given_a_planner_after_its_end_gave_up_is_driven_once(
        autojump_clock: trio.abc.Clock, db_path: Path, fault: Fault,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Its task stopped with the process alive and its `done` set (so `wait` raised the
    `StoreGaveUp`). A planner the host then attached ran it with `done` still set: `wait`
    answered at once with a running process, the host's `exit` of a process its planner
    drives went through, and a second `attach` started a second task driving the same
    process. Now a process that starts again is waited for again."""
    monkeypatch.setattr(faults, "STORE_PATIENCE", 60.0)
    image = AgentImage("clock", tools=("now",), needs=("clock:*:read",))
    async with Kernel.open(db_path) as kernel:
        fault.install("audit", updates=("processes",))
        await kernel.register_image(image)
        pid = kernel.spawn("clock", caps=["clock:*:read"], planner=_NowInAFault(fault))
        with trio.fail_after(600), pytest.raises(StoreGaveUp):
            await kernel.wait(pid)
        fault.set(False)
        planner = _Gated()
        kernel.attach(pid, planner)
        await trio.sleep(1)
        with pytest.raises(Conflict, match="already running under a planner"):
            kernel.attach(pid, ScriptedPlanner([Exit(3)]))
        with pytest.raises(Conflict, match="driven by its planner"):
            kernel.exit(pid, 4)
        assert (await kernel.wait(pid, timeout=5))["state"] != "exited"
        planner.gate.set()
        with trio.fail_after(60):
            status = await kernel.wait(pid)
        assert (status["state"], status["exit_code"], status["result"]) == ("exited", 0,
                                                                             "attached")
        assert kernel.store.get_process(pid)["exit_code"] == 0
        assert kernel.verify_audit()[1] == []


class _ExitInAFault:
    """A planner whose process exits, at once, into a store that fails."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    async def next_action(self, history: object) -> Exit:
        self.fault.set(True)
        return Exit(0, "done")


async def test_an_exit_deferred_into_a_group_commit_gives_up_as_any_end_does(
        autojump_clock: trio.abc.Clock, db_path: Path, fault: Fault,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """While another process runs under a planner, an exit is a deferred write that waits for
    the group commit (`broker.kernel.exiting`). A store that never took it was tried for
    ever there (`GroupCommit.settled`), and `wait` waited for ever. Now it gives up after
    `STORE_PATIENCE` like any end: `StoreGaveUp`, the process live as the store has it, and
    nothing of the end written later when the store heals (the broker's next commit does
    not carry it); a broker that opens the store resumes it."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(faults, "STORE_PATIENCE", 60.0)
    async with Kernel.open(db_path) as kernel:
        fault.install("events", updates=("processes",))
        await kernel.register_image(AgentImage("clock", tools=("now",), needs=("clock:*:read",)))
        beside = _Gated()  # (runs under a planner meanwhile: exits are group-committed)
        other = kernel.spawn("clock", caps=["clock:*:read"], planner=beside)
        await trio.sleep(1)
        pid = kernel.spawn("clock", caps=["clock:*:read"], planner=_ExitInAFault(fault))
        with trio.fail_after(600), pytest.raises(StoreGaveUp) as caught:
            await kernel.wait(pid)
        assert "disk full" in caught.value.message
        assert kernel.process(pid).alive and kernel.process(pid).exiting is None
        fault.set(False)
        beside.gate.set()  # the other's end commits: it carries nothing of the one given up
        with trio.fail_after(60):
            assert (await kernel.wait(other))["state"] == "exited"
        assert kernel.store.get_process(pid)["state"] != "exited"
        assert not [e for e in kernel.store.events(pid=pid)
                    if e["kind"] == "state" and e["data"]["new"] == "exited"]
        assert not [r for r in caplog.records if r.exc_info]  # typed, no traceback
    async with Kernel.open(db_path, planners=lambda *_: ScriptedPlanner([Exit(0)])) as kernel:
        with trio.fail_after(600):
            status = await kernel.wait(pid)
        assert status["state"] == "exited"
        assert kernel.verify_audit()[1] == []
