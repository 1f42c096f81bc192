"""A store that fails for a while (`broker.kernel.faults`): the group commit's timer, the
event flush and the controls' poll go on (one log line when it starts, one when it works
again), what waited is committed once the store heals, and a caller waiting for a commit
that failed gets a typed error. Real SQLite, made to fail by a trigger that raises on the
rows a deferred write inserts while a switch row says so (set from another connection); a
fake only for trio's clock (autojump: the timers come due in order, and nothing but the
kernel's own tasks commits meanwhile)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest
import trio

from broker import AgentImage, CallTool, Conflict, Exit, Kernel, Observation, ScriptedPlanner
from broker.store import AuditRecord
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_approval_grants import _proc, ask_write, write


class Thinking:
    """A model that, after its first step, thinks until the test lets it go on; the fault
    comes on as it starts to think (the step's observation waits for a commit then)."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.thinking, self.go = trio.Event(), trio.Event()
        self.waiting = False

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        if len(history) == 1:
            self.fault.set(True)
            self.thinking.set()
            await self.go.wait()
        return CallTool("now", {}) if len(history) < 2 else Exit(0)


def _lines(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(what)]


async def test_a_failing_group_commit_does_not_end_the_kernel_and_commits_once_healed(
        autojump_clock: trio.abc.Clock, kernel: Kernel, fault: Fault,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="libos.kernel")
    fault.install("observations")
    await kernel.register_image(AgentImage("clock", tools=("now",), needs=("clock:*:read",)))
    planner = Thinking(fault)
    pid = kernel.spawn("clock", caps=["clock:*:read"], planner=planner)
    await planner.thinking.wait()
    on_disk = "SELECT COUNT(*) FROM observations WHERE pid=?"
    assert kernel.store.deferred and fault.count(on_disk, pid) == 0
    await trio.sleep(10)  # every timer of the kernel comes due, many times over
    assert kernel.process(pid).alive and kernel.store.deferred
    assert fault.count(on_disk, pid) == 0
    assert len(_lines(caplog, "the group commit failed")) == 1
    assert len(_lines(caplog, "reading the controls failed")) == 1
    assert len(_lines(caplog, "signing the audit chain's head failed")) == 1
    fault.set(False)
    await trio.sleep(2)
    assert fault.count(on_disk, pid) == 1 and not kernel.store.deferred
    assert len(_lines(caplog, "the group commit works again")) == 1
    planner.go.set()
    status = await kernel.wait(pid)
    assert status["state"] == "exited" and status["exit_code"] == 0
    assert fault.count(on_disk, pid) == 2
    assert kernel.verify_audit()[1] == []


async def test_a_caller_waiting_for_a_failed_commit_gets_a_typed_error(
        kernel: Kernel, fault: Fault) -> None:
    """`GroupCommit.durable` (what a grouped syscall waits in before its effect): the commit
    fails, the caller gets `Conflict`, the record still waits (nothing written, nothing
    lost); once the store heals, the next wait commits it."""
    fault.install("audit")
    await kernel.register_image(AgentImage("idle", tools=("now",), needs=("clock:*:read",)))
    pid = kernel.spawn("idle", caps=["clock:*:read"])
    store, group = kernel.store, kernel.dispatcher.group
    fault.set(True)
    seq = store.append_audit(AuditRecord(phase="intent", syscall="clock.now", pid=pid,
                                         detail={"args": {}}), defer=True)
    with pytest.raises(Conflict, match=r"could not commit .*disk full"):
        await group.durable()
    assert store.committed_total < store.deferred_total
    on_disk = "SELECT COUNT(*) FROM audit WHERE seq=?"
    assert fault.count(on_disk, seq) == 0
    fault.set(False)
    await group.durable()
    assert fault.count(on_disk, seq) == 1
    assert kernel.verify_audit()[1] == []


async def test_a_failing_event_flush_keeps_its_batch_for_the_next(
        autojump_clock: trio.abc.Clock, kernel: Kernel, fault: Fault,
        caplog: pytest.LogCaptureFixture) -> None:
    """Tool log lines wait in a batch for the periodic flush; while the store refuses them
    the flush goes on failing (one line logged), and once it heals the batch is written, in
    order, nothing of it lost."""
    caplog.set_level(logging.WARNING, logger="libos.kernel")
    fault.install("events")
    await kernel.register_image(AgentImage("idle", tools=("now",), needs=("clock:*:read",)))
    pid = kernel.spawn("idle", caps=["clock:*:read"])
    fault.set(True)
    for n in range(3):
        kernel.events.emit_batched(pid, "log", text=f"line {n}")
    await trio.sleep(5)
    logged = "SELECT COUNT(*) FROM events WHERE pid=? AND kind='log'"
    assert fault.count(logged, pid) == 0
    assert len(_lines(caplog, "the event flush failed")) == 1
    fault.set(False)
    await trio.sleep(1)
    assert [e["data"]["text"] for e in kernel.store.events(pid=pid) if e["kind"] == "log"] == [
        "line 0", "line 1", "line 2"]
    assert len(_lines(caplog, "the event flush works again")) == 1


class _NowOnceInAFault:
    """A model whose one step (`now`) runs while the store refuses audit rows; it thinks
    until the store has healed (`healed`), then exits."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.healed = trio.Event()

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        if not history:
            self.fault.set(True)
            return CallTool("now", {})
        await self.healed.wait()
        return Exit(0)


async def test_a_step_whose_outcome_waits_for_a_failed_commit_is_not_told_it_failed(
        autojump_clock: trio.abc.Clock, kernel: Kernel, fault: Fault) -> None:
    """While processes step beside each other, a call's `ok` outcome is a deferred record and
    the call waits in `GroupCommit.durable` before its answer leaves. The commit fails: the
    call was answered `Conflict` ("not durable"), and that error became the step's
    observation (what the model reads, what the checkpoint keeps), while the `ok` record,
    still waiting, was committed once the store healed. The history then says the call
    failed and the audit says it succeeded: a model retries an effect that happened (an
    `obj.put`, a `proc.spawn`). The outcome is decided; only its durability waits: the call
    waits for it (`GroupCommit.settled`), never told it failed."""
    fault.install("audit")
    await kernel.register_image(AgentImage("clock", tools=("now", "sleep"),
                                           needs=("clock:*:read,sleep",)))
    caps = ["clock:*:read,sleep"]
    sleeper = kernel.spawn("clock", caps=caps,
                           planner=ScriptedPlanner([CallTool("sleep", {"seconds": 3600})]))
    await trio.sleep(0.01)  # (it sleeps: two processes step, so records are grouped)
    planner = _NowOnceInAFault(fault)
    pid = kernel.spawn("clock", caps=caps, planner=planner)

    async def heal() -> None:
        await trio.sleep(5)
        fault.set(False)
        await trio.sleep(2)  # (the group commit's timer commits what waited)
        planner.healed.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heal)
            status = await kernel.wait(pid)
        kernel.kill(sleeper)
        await kernel.wait(sleeper)
    assert status["state"] == "exited"
    [step] = kernel.store.observations(pid)
    [outcome] = [r for r in kernel.audit(pid)
                 if r["syscall"] == "tool.call"
                 and r["phase"] in ("outcome", "intent+outcome")]  # (`now`'s: whole)
    assert "error" not in (outcome["detail"] or {})  # recorded: it succeeded
    assert step["error"] is None, step["error"]  # so its planner must not read a failure
    assert kernel.verify_audit()[1] == []


class _NowInAFault:
    """A model whose one step (`now`) runs while the store fails (its intent record fails)."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        if not history:
            self.fault.set(True)
            return CallTool("now", {})
        return Exit(0)


async def test_a_process_whose_own_write_fails_ends_alone_once_its_end_is_durable(
        autojump_clock: trio.abc.Clock, kernel: Kernel, fault: Fault,
        caplog: pytest.LogCaptureFixture) -> None:
    """A step's own record fails (the raw sqlite3 error out of the dispatcher), and so does
    the write of the end it is given: that error left the scheduler's task, and the kernel's
    nursery, every process, the broker with it. Now that process waits for its end to be
    durable (shown nowhere before: alive, `wait` times out), then ends with a typed error;
    the broker and the other processes go on."""
    caplog.set_level(logging.WARNING)
    fault.install("audit", updates=("processes",))
    await kernel.register_image(AgentImage("clock", tools=("now",), needs=("clock:*:read",)))
    other = kernel.spawn("clock", caps=["clock:*:read"])  # (host-driven)
    pid = kernel.spawn("clock", caps=["clock:*:read"], planner=_NowInAFault(fault))
    with trio.fail_after(120):
        await trio.sleep(10)
        assert kernel.process(pid).alive  # its end is not durable: nothing shows it
        assert (await kernel.wait(pid, timeout=1))["state"] != "exited"
        assert len(_lines(caplog, f"ending process {pid} failed")) == 1
        fault.set(False)
        status = await kernel.wait(pid)
    assert status["state"] == "exited" and status["exit_code"] == 1
    assert status["result"]["error"] == "CONFLICT" and "disk full" in status["result"]["message"]
    assert kernel.store.get_process(pid)["state"] == "exited"
    assert not [r for r in caplog.records if r.exc_info]  # no traceback: a typed end
    assert await kernel.call_tool(other, "now", {})  # the broker goes on
    assert kernel.verify_audit()[1] == []


async def test_a_kill_whose_event_fails_after_the_end_is_durable_still_ends_the_task(
        autojump_clock: trio.abc.Clock, kernel: Kernel, fault: Fault) -> None:
    """The end is written; then its `state` event fails. The error left `Kernel.move`
    before it set `done` or cancelled the process's task: the kill raised the raw sqlite3
    error, the process slept on, `wait` never returned. Now the event waits for the flush."""
    fault.install("events")
    await kernel.register_image(AgentImage("clock", tools=("sleep",), needs=("clock:*:sleep",)))
    pid = kernel.spawn("clock", caps=["clock:*:sleep"],
                       planner=ScriptedPlanner([CallTool("sleep", {"seconds": 3600})]))
    await trio.sleep(1)
    fault.set(True)
    with trio.fail_after(60):
        kernel.kill(pid)
        status = await kernel.wait(pid)
    assert status["state"] == "killed"
    assert kernel.store.get_process(pid)["state"] == "killed"
    fault.set(False)
    await trio.sleep(1)
    assert [e["data"]["new"] for e in kernel.store.events(pid=pid) if e["kind"] == "state"
            ][-1] == "killed"


async def test_a_kill_with_a_waiting_request_whose_events_fail_still_ends_the_process(
        autojump_clock: trio.abc.Clock, kernel: Kernel, fault: Fault) -> None:
    """Red team (rt/late): as above, with a call of the process waiting on an approval. The
    end (and its request's cancellation) is durable; then `_settle`'s `approval` event,
    written with `emit` (not `emit_durably`), fails: `Kernel.move` leaves before the memory
    moves, so the kill raises the raw sqlite3 error and the process stays alive in the
    broker though its end is durable."""
    fault.install("events")
    pid = await _proc(kernel, ask_write())
    outcome: list[BaseException] = []

    async def call() -> None:
        try:
            await kernel.call_tool(pid, "write_file", write())
        except Exception as exc:
            outcome.append(exc)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            while not kernel.approvals():
                await trio.sleep(0.01)
            fault.set(True)
            kernel.kill(pid)  # (raised sqlite3.IntegrityError)
            status = await kernel.wait(pid)
        assert status["state"] == "killed"
        assert kernel.store.get_process(pid)["state"] == "killed"
        assert [type(e).__name__ for e in outcome] == ["Cancelled"]
    fault.set(False)
    await trio.sleep(1)  # the flush writes the events that waited
    kinds = [(e["kind"], e["data"].get("state") or e["data"].get("new"))
             for e in kernel.store.events(pid=pid) if e["kind"] in ("state", "approval")]
    assert ("approval", "cancelled") in kinds and kinds[-1] == ("state", "killed")
