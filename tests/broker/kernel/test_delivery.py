"""Exactly once across crashes, at each point where a message or an event is in flight: a
broker stops dead there (an exception no handler takes, and from then on every write to the
store fails, so nothing after the point is recorded; every write before it is committed, as
after a SIGKILL), and the next broker either hands what was taken to the planner or puts it
back. `test_crash.py` does the same with real SIGKILLs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker import Kernel
from broker.store import AuditRecord
from tests.broker.kernel.crashing import Crash, crash_after, crashing, outcome_of
from tests.conftest import open_image

NEEDS = ("proc:*:message",)
CAPS = ["proc:event:go:message"]


@pytest.mark.parametrize("point", ["proc.receive", "tool.call"])
async def test_a_message_a_planner_took_is_delivered_once(db_path: Path, point: str) -> None:
    undo = crash_after("append_audit", outcome_of(point))

    async def start(kernel: Kernel) -> None:
        await open_image(kernel, "inbox", needs=NEEDS, tools=("receive",), planner={
            "kind": "scripted", "actions": [{"tool": "receive", "args": {}}] * 2})
        pid = kernel.spawn("inbox")
        kernel.send_message(None, pid, "m1: transfer approved")
        kernel.send_message(None, pid, "m2: STOP")

    try:
        await crashing(db_path, start)
    finally:
        undo()
    async with Kernel.open(db_path) as kernel:
        status = await kernel.wait(1, timeout=10)
        assert status["state"] == "exited"
        bodies = [o.result["body"] for o in kernel.process(1).history]
        assert bodies == ["m1: transfer approved", "m2: STOP"]
        assert kernel.store.mailbox_size(1) == 0
        # The recorded outcome was handed over, not run again: one receive per message.
        receives = [r for r in kernel.audit(1) if r["syscall"] == "proc.receive"
                    and r["phase"] == "intent"]
        assert len(receives) == 2


@pytest.mark.parametrize("crash", ["seen", "outcome"])
async def test_an_event_a_planner_saw_is_not_lost(db_path: Path, crash: str) -> None:
    undo = (crash_after("take_event", lambda taken, *_, **__: taken is not None) if crash == "seen"
            else crash_after("append_audit", outcome_of("proc.wait_event")))

    async def start(kernel: Kernel) -> None:
        await open_image(kernel, "waiter", needs=NEEDS, tools=("wait_event",), planner={
            "kind": "scripted", "actions": [{"tool": "wait_event", "args": {"name": "go"}}]})
        kernel.spawn("waiter", caps=CAPS)
        await trio.sleep(0.05)
        kernel.raise_event("go", {"n": 1})

    try:
        await crashing(db_path, start)
    finally:
        undo()
    async with Kernel.open(db_path) as kernel:
        # Without recovery putting it back (or handing it over), it would wait forever.
        status = await kernel.wait(1, timeout=10)
        assert status["state"] == "exited"
        assert [o.result["data"] for o in kernel.process(1).history] == [{"n": 1}]


async def test_a_message_taken_for_a_host_whose_call_was_cut_off_goes_back(
        db_path: Path) -> None:
    undo = crash_after("append_audit", outcome_of("proc.receive"))

    async def start(kernel: Kernel) -> None:
        await open_image(kernel, "inbox", needs=NEEDS, tools=("receive",))
        pid = kernel.spawn("inbox")
        kernel.send_message(None, pid, "m1")
        await kernel.call_tool(pid, "receive", {})  # the host never gets its answer

    try:
        await crashing(db_path, start)
    finally:
        undo()
    async with Kernel.open(db_path) as kernel:
        assert kernel.store.mailbox_size(1) == 1
        got = await kernel.call_tool(1, "receive", {"timeout": 0})
        assert got["body"] == "m1"
        assert kernel.verify_audit()[1] == []


SLOW_RECEIVER = """export default async function run(args: any, libos: any) {
  const message = await libos.syscall("proc.receive", {});
  await new Promise((r) => setTimeout(r, 20000));
  return message; }"""


@pytest.mark.parametrize("host", ["cut off", "answered"])
async def test_a_host_call_beside_a_planners_step_is_settled_apart(db_path: Path,
                                                                   host: str) -> None:
    """A host's call (an MCP client's) takes a message while the process's planner is mid-step
    on something else, and the broker dies. The host's call is settled on its own: cut off,
    its message goes back (the host never got it), whatever the step's fate; answered, the
    message stays taken (the host has it), even when the step is run again."""
    from sandboxes.deno import DenoSandbox

    def step_done(_: object, record: AuditRecord, **__: object) -> bool:
        return (record.phase == "outcome" and record.syscall == "tool.call"
                and record.inv is None and record.resource == "wait_event")

    # Cut off: the broker dies once the step's outcome is recorded, before its checkpoint.
    # Answered: it dies as the step takes its event, before any outcome of the step.
    undo = (crash_after("append_audit", step_done) if host == "cut off" else
            crash_after("take_event", lambda taken, *_, **__: taken is not None))
    got: list[object] = []
    try:
        with pytest.raises(BaseException) as caught:
            async with DenoSandbox(spares=0) as deno, \
                    Kernel.open(db_path, sandboxes=[deno]) as kernel:
                slow = {"name": "slow_receiver", "lang": "ts", "source": SLOW_RECEIVER}
                await open_image(kernel, "both", needs=NEEDS, tools=(
                    "wait_event", "receive", slow), planner={"kind": "scripted", "actions": [
                        {"tool": "wait_event", "args": {"name": "go"}},
                        {"tool": "receive", "args": {"timeout": 0}}, {"exit": 0}]})
                pid = kernel.spawn("both", caps=CAPS)
                kernel.send_message(None, pid, "m1: for the host")
                with trio.fail_after(10):
                    while kernel.process(pid).state.value != "waiting":  # the step is on
                        await trio.sleep(0.01)
                async with trio.open_nursery() as nursery:
                    if host == "cut off":
                        nursery.start_soon(kernel.call_tool, pid, "slow_receiver", {})
                        with trio.fail_after(30):
                            while kernel.store.mailbox_size(pid):  # the host's call took it
                                await trio.sleep(0.01)
                    else:
                        got.append(await kernel.call_tool(pid, "receive", {}))
                    kernel.raise_event("go")
        assert caught.group_contains(Crash)
    finally:
        undo()
    async with Kernel.open(db_path) as kernel:
        status = await kernel.wait(1, timeout=10)
        assert status["state"] == "exited"
        history = kernel.process(1).history
        assert [o.action.name for o in history] == ["wait_event", "receive"]
        assert history[0].result["name"] == "go"  # handed over, or seen again: once
        if host == "cut off":
            # Back in the mailbox: the planner's next receive takes it.
            assert history[1].result["body"] == "m1: for the host"
            unknown = [r for r in kernel.audit(1) if r["syscall"] == "tool.call"
                       and r["detail"].get("unknown")]
            assert [r["resource"] for r in unknown] == ["slow_receiver"]
        else:
            assert got[0]["body"] == "m1: for the host"  # the host has it: not again
            assert history[1].result is None
        assert kernel.store.mailbox_size(1) == 0
        assert kernel.verify_audit()[1] == []
