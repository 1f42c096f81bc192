"""The gate under every adapter, attacked directly: call ids are the model's text (reused,
empty, huge, not text), answers come for calls that wait for none, and a gate that closes
leaves no request behind for anyone to approve."""

from __future__ import annotations

import trio

from broker.adapters.gate import MAX_CALLS, Asked, Done, ToolGate
from tests.broker.adapters.conftest import World

ASK = {"to": "ann@partner.com", "subject": "x"}


async def test_hostile_call_ids_are_typed_errors(world: World) -> None:
    async with ToolGate.open(world.kernel, world.pid, who="test") as gate:
        asked = await gate.start("k", "send_email", ASK)
        assert isinstance(asked, Asked)
        reused = await gate.start("k", "send_email", {"to": "bob@example.com", "subject": "x"})
        assert reused == Done(False, {"code": "CONFLICT",
                                      "message": "call id 'k' is already in use"})
        for key in ("", "x" * 257, 5, None):
            done = await gate.start(key, "send_email", ASK)  # type: ignore[arg-type]
            assert isinstance(done, Done) and done.value["code"] == "CONFLICT"
        nothing = await gate.answer("nobody", True)
        assert isinstance(nothing, Done) and nothing.value["code"] == "NOT_FOUND"
        # The call that asked is untouched by all of that, and still answerable.
        assert (await gate.answer("k", True)) == Done(True, {"queued": 1})
    assert world.outbox == ["ann@partner.com"]


async def test_calls_in_flight_are_bounded(world: World) -> None:
    async with ToolGate.open(world.kernel, world.pid, who="test") as gate:
        for n in range(MAX_CALLS):
            gate._calls[f"held-{n}"] = object()  # type: ignore[assignment]
        over = await gate.start("one-more", "send_email", ASK)
        assert isinstance(over, Done) and over.value["code"] == "LIMIT_EXCEEDED"
        gate._calls.clear()
        assert world.kernel.approvals() == []  # refused before anything was asked


async def test_a_closing_gate_cancels_what_its_calls_asked(world: World) -> None:
    async with ToolGate.open(world.kernel, world.pid, who="test") as gate:
        assert isinstance(await gate.start("k", "send_email", ASK), Asked)
        [pending] = world.kernel.approvals()
    [settled] = world.kernel.approvals(None)
    assert settled["id"] == pending["id"] and settled["state"] == "cancelled"
    assert world.outbox == []
    # The process itself goes on: the host can still call it.
    assert await world.kernel.call_tool(world.pid, "send_email",
                                        {"to": "bob@example.com", "subject": "x"}) == {"queued": 1}


async def test_requests_of_other_callers_stay_in_the_queue(world: World) -> None:
    """Only a request filed inside one of the gate's calls is handed to the framework: the
    host's own call to the same process waits in the approval queue as always."""
    async with ToolGate.open(world.kernel, world.pid, who="test") as gate, \
            trio.open_nursery() as nursery:
        nursery.start_soon(world.kernel.call_tool, world.pid, "send_email", ASK)
        while not world.kernel.approvals():
            await trio.sleep(0.01)
        assert gate._calls == {}
        [request] = world.kernel.approvals()
        world.kernel.approve(request["id"])
    assert world.outbox == ["ann@partner.com"]


async def test_arguments_past_the_planners_bounds_are_refused_before_the_kernel(
        world: World) -> None:
    """What a model sends is bounded as a planner's calls are: too deep, too big, or not
    UTF-8 (a lone surrogate, which a JSON escape can make) is INVALID_ARGUMENT, and nothing
    is recorded for it; a call beside them still works."""
    deep: object = "x"
    for _ in range(100):
        deep = [deep]
    hostile = [{"to": "bob@example.com", "subject": deep},
               {"to": "bob@example.com", "subject": "x" * 200_000},
               {"to": "b\ud800@example.com", "subject": "x"},
               "\ud800"]
    before = len(world.kernel.audit(world.pid))
    async with ToolGate.open(world.kernel, world.pid, who="test") as gate:
        for n, args in enumerate(hostile):
            done = await gate.start(f"h{n}", "send_email", args)
            assert isinstance(done, Done) and done.value["code"] == "INVALID_ARGUMENT", args
        assert len(world.kernel.audit(world.pid)) == before
        ok = await gate.start("fine", "send_email", {"to": "bob@example.com", "subject": "x"})
    assert ok == Done(True, {"queued": 1})
    assert world.kernel.verify_audit()[1] == []
