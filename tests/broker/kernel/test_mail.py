"""Durable mailboxes and named events."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from broker import Kernel, NotCapable
from tests.conftest import open_image

NEEDS = ("proc:*:message", "clock:*:read")


async def _call(kernel: Kernel, pid: int, name: str, args: dict) -> object:
    return await kernel.dispatcher.run(kernel.process(pid), None, name, args)


async def test_send_needs_a_capability_and_receive_waits(kernel: Kernel) -> None:
    await open_image(kernel, needs=NEEDS)
    receiver = kernel.spawn("agent")
    sender = kernel.spawn("agent", caps=[f"proc:{receiver}:message"])
    stranger = kernel.spawn("agent")
    with pytest.raises(NotCapable):
        await _call(kernel, stranger, "proc.send", {"pid": receiver, "body": "hi"})
    got: list[object] = []

    async def receive() -> None:
        got.append(await _call(kernel, receiver, "proc.receive", {}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        await _call(kernel, sender, "proc.send", {"pid": receiver, "body": {"task": 1}})
    assert got[0]["body"] == {"task": 1} and got[0]["from"] == sender
    assert await _call(kernel, receiver, "proc.receive", {"timeout": 0.01}) is None


async def test_messages_survive_a_restart_and_wake_a_waiting_process(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, needs=NEEDS)
        await open_image(kernel, "inbox", needs=NEEDS, planner={"kind": "scripted", "actions": [
            {"tool": "receive", "args": {}}, {"exit": 0}]}, tools=("receive",))
        waiting = kernel.spawn("inbox")
        sender = kernel.spawn("agent", caps=[f"proc:{waiting}:message"])
        early = kernel.spawn("agent")
        kernel.send_message(None, early, "stored before anyone listens")
        await trio.testing.wait_all_tasks_blocked()
        assert kernel.process(waiting).state.value == "waiting"
    async with Kernel.open(db_path) as kernel:
        await trio.testing.wait_all_tasks_blocked()
        assert kernel.process(waiting).state.value == "waiting"  # still waiting after restart
        await _call(kernel, sender, "proc.send", {"pid": waiting, "body": "wake up"})
        status = await kernel.wait(waiting, timeout=5)
        assert status["state"] == "exited"
        assert kernel.process(waiting).history[0].result["body"] == "wake up"
        message = await _call(kernel, early, "proc.receive", {"timeout": 0})
        assert message["body"] == "stored before anyone listens"


async def test_named_events_from_host_and_process(kernel: Kernel) -> None:
    await open_image(kernel, needs=NEEDS)
    waiter = kernel.spawn("agent", caps=["proc:event:deploy*:message"])
    raiser = kernel.spawn("agent", caps=["proc:event:deploy.done:message"])
    kernel.raise_event("deploy.started", {"by": "host"})
    first = await _call(kernel, waiter, "proc.wait_event", {"name": "deploy.started"})
    assert first["data"] == {"by": "host"} and first["source"] is None
    # Each event is seen once per process.
    assert await _call(kernel, waiter, "proc.wait_event", {"name": "deploy.started",
                                                          "timeout": 0.01}) is None
    with pytest.raises(NotCapable):
        await _call(kernel, raiser, "proc.raise", {"name": "deploy.started"})
    got: list[object] = []
    async with trio.open_nursery() as nursery:
        async def wait() -> None:
            got.append(await _call(kernel, waiter, "proc.wait_event", {"name": "deploy.done"}))
        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        await _call(kernel, raiser, "proc.raise", {"name": "deploy.done", "data": 7})
    assert got[0]["data"] == 7 and got[0]["source"] == raiser


async def test_waits_that_end_leave_nothing_behind(kernel: Kernel) -> None:
    """Memory does not grow with history: a process that waits once on each of many event
    names (say job:<id>), or many processes that each wait for mail, leave no trace in the
    broker once their waits have ended. A waiter still waiting on a name another gave up on
    is still woken."""
    await open_image(kernel, needs=NEEDS)
    pid = kernel.spawn("agent", caps=["proc:event:*:message"])
    for n in range(500):
        assert await _call(kernel, pid, "proc.wait_event", {
            "name": f"job:{n:06d}", "timeout": 0}) is None
    others = [kernel.spawn("agent") for _ in range(50)]
    for other in others:
        assert await _call(kernel, other, "proc.receive", {"timeout": 0}) is None
    assert kernel.mail.watched() == 0
    # The neighbours: one waiter times out on "deploy" while another keeps waiting.
    patient = kernel.spawn("agent", caps=["proc:event:deploy:message"])
    got: list[object] = []

    async def wait(who: int, timeout: float | None) -> None:
        got.append(await _call(kernel, who, "proc.wait_event", {
            "name": "deploy", **({} if timeout is None else {"timeout": timeout})}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, patient, None)
        await trio.testing.wait_all_tasks_blocked()
        await wait(pid, 0.01)
        assert got == [None]
        kernel.raise_event("deploy", {"v": 2})
    assert got[1]["data"] == {"v": 2}
    assert kernel.mail.watched() == 0


async def test_a_flood_of_events_does_not_slow_other_waits(kernel: Kernel) -> None:
    """A million events raised under one name (rows as `raise_event` writes them, put in
    one transaction for speed), and a million events this process has seen: another name's
    wait reads that name's events only (before: ~90 ms each, on the broker's thread)."""
    await open_image(kernel, needs=NEEDS)
    pid = kernel.spawn("agent", caps=["proc:event:job*:message"])
    flooder = kernel.spawn("agent", caps=["proc:event:flood:message"])
    with kernel.store.transaction() as db:
        db.executemany("INSERT INTO raised(name, data, source, created) VALUES (?,?,?,?)",
                       [("flood", "null", flooder, 0.0)] * 1_000_000)
        db.executemany("INSERT INTO raised_seen(pid, event, taken) VALUES (?,?,?)",
                       [(pid, n, None) for n in range(1, 1_000_001)])
    start = trio.current_time()
    for n in range(50):
        assert await _call(kernel, pid, "proc.wait_event", {
            "name": f"job:{n}", "timeout": 0}) is None
    assert trio.current_time() - start < 1.5  # 50 waits: ~4.5 s before
    # The neighbour: an event of its name is still seen, once.
    kernel.raise_event("job:7", {"n": 7})
    got = await _call(kernel, pid, "proc.wait_event", {"name": "job:7", "timeout": 0})
    assert got["data"] == {"n": 7}
    assert await _call(kernel, pid, "proc.wait_event", {"name": "job:7", "timeout": 0}) is None
