"""The OpenAI Agents SDK drives a real kernel through `function_tools`: the SDK's own
`ScriptedModel` makes the calls (a host tool and a TypeScript tool in Deno), libos checks, asks
and audits them, and an approval is an interruption the person answers in the run state."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import trio
from agents import Agent, Runner, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call

from broker.adapters.gate import ToolGate, run_asyncio
from broker.adapters.openai_agents import function_tools
from broker.store.audit import CLOSES
from tests.broker.adapters.conftest import World

set_tracing_disabled(True)  # no exporter: nothing leaves the machine


def outputs(model: ScriptedModel) -> dict[str, Any]:
    """What each tool call returned to the model, by call id."""
    seen: dict[str, Any] = {}
    for call in model.calls:
        for item in call.input if isinstance(call.input, list) else ():
            if isinstance(item, dict) and item.get("type") == "function_call_output":
                text = item["output"]
                try:
                    seen[item["call_id"]] = json.loads(text)
                except ValueError:
                    seen[item["call_id"]] = text
    return seen


async def queued(world: World) -> dict[str, Any]:
    """The one request waiting in libos's queue, once the call has filed it."""
    with trio.fail_after(60):
        while not world.kernel.approvals():
            await trio.sleep(0.02)
    [pending] = world.kernel.approvals()
    return pending


async def run_answered(world: World, agent: Agent[Any],
                       *answers: Callable[[dict[str, Any]], None]) -> Any:
    """The SDK's run from trio, while each request its calls file waits in libos's queue and
    is answered there in turn (`answers`, as the CLI or the page would): its result."""
    results: list[Any] = []

    async def run() -> None:
        results.append(await run_asyncio(Runner.run, agent, "go"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        for answer in answers:
            answer(await queued(world))
    [result] = results
    return result


def agent_for(gate: ToolGate, model: ScriptedModel) -> Agent[Any]:
    return Agent(name="assistant", model=model, tools=function_tools(gate))


@pytest.fixture
def who(world: World) -> str:
    return f"openai-agents:pid {world.pid}"


async def test_model_calls_are_checked_and_audited_by_the_kernel(world: World) -> None:
    model = ScriptedModel([
        [function_call("send_email", {"to": "bob@example.com", "subject": "hi"}, call_id="a"),
         function_call("send_email", {"to": "eve@evil.com", "subject": "hi"}, call_id="b"),
         function_call("shout", {"path": "/notes/n.txt", "text": "ship it"}, call_id="c"),
         function_call("shout", {"path": "/etc/passwd", "text": "x"}, call_id="d")],
        [assistant_message("done")]])
    async with ToolGate.open(world.kernel, world.pid, who="openai-agents") as gate:
        result = await run_asyncio(Runner.run, agent_for(gate, model), "go")
    assert result.final_output == "done" and result.interruptions == []
    seen = outputs(model)
    assert seen["a"] == {"queued": 1}
    assert seen["b"] == {"error": "NOT_CAPABLE",
                         "message": "no capability for email:send on 'eve@evil.com'"}
    assert seen["c"] == {"written": "/notes/n.txt"}
    assert (world.root / "notes" / "n.txt").read_text() == "SHIP IT"  # Deno ran it
    assert seen["d"]["error"] == "NOT_CAPABLE"
    assert world.outbox == ["bob@example.com"]
    assert ("denied", "host.send_email", "eve@evil.com") in world.records()
    assert ("denied", "fs.write", "/etc/passwd") in world.records()
    assert world.kernel.verify_audit()[1] == []


async def test_malformed_arguments_are_a_typed_error_the_model_sees(world: World) -> None:
    model = ScriptedModel([
        [function_call("send_email", {"subject": "x"}, call_id="a"),
         function_call("send_email", {"to": 5, "subject": "x"}, call_id="b"),
         function_call("shout", {"path": "/notes/x", "text": "y", "extra": 1}, call_id="c"),
         function_call("send_email", {"to": "bob@example.com", "subject": "ok"}, call_id="d")],
        [assistant_message("done")]])
    async with ToolGate.open(world.kernel, world.pid, who="openai-agents") as gate:
        result = await run_asyncio(Runner.run, agent_for(gate, model), "go")
    assert result.final_output == "done"
    seen = outputs(model)
    for key in "abc":
        assert seen[key]["error"] == "INVALID_ARGUMENT", key
    assert seen["d"] == {"queued": 1}
    assert world.outbox == ["bob@example.com"]
    assert not (world.root / "notes" / "x").exists()
    failed = [r for r in world.kernel.audit(world.pid)
              if r["phase"] in CLOSES and r["detail"].get("error") == "INVALID_ARGUMENT"]
    assert len(failed) == 3


async def test_arguments_that_are_not_json_reach_the_kernel_once_approved(world: World) -> None:
    """The SDK puts arguments it cannot parse to the person first; approved, they are the
    kernel's to refuse, with a typed error and a record."""
    model = ScriptedModel([[function_call("send_email", "{not json", call_id="a"),
                            function_call("send_email", "[1, 2]", call_id="b")],
                           [assistant_message("done")]])
    async with ToolGate.open(world.kernel, world.pid, who="openai-agents") as gate:
        agent = agent_for(gate, model)
        first = await run_asyncio(Runner.run, agent, "go")
        state = first.to_state()
        assert len(first.interruptions) == 2
        for item in first.interruptions:
            state.approve(item)
        await run_asyncio(Runner.run, agent, state)
    assert outputs(model)["a"]["error"] == outputs(model)["b"]["error"] == "INVALID_ARGUMENT"
    assert len([r for r in world.kernel.audit(world.pid)
                if r["detail"].get("error") == "INVALID_ARGUMENT"]) == 2
    assert world.kernel.approvals(None) == []  # libos asked nobody about garbage


async def test_an_ask_is_an_interruption_the_person_approves(world: World, who: str) -> None:
    model = ScriptedModel([
        [function_call("send_email", {"to": "ann@partner.com", "subject": "offer"},
                       call_id="ask-1")],
        [assistant_message("done")]])
    async with ToolGate.open(world.kernel, world.pid, who="openai-agents") as gate:
        agent = agent_for(gate, model)
        first = await run_asyncio(Runner.run, agent, "go")
        [item] = first.interruptions
        assert (item.tool_name, item.raw_item.call_id) == ("send_email", "ask-1")
        [pending] = world.kernel.approvals()
        assert pending["resource"] == "ann@partner.com"
        assert world.outbox == []  # nothing ran yet
        state = first.to_state()
        state.approve(item)
        second = await run_asyncio(Runner.run, agent, state)
    assert second.final_output == "done"
    assert outputs(model)["ask-1"] == {"queued": 1}
    assert world.outbox == ["ann@partner.com"]
    [answered] = world.kernel.approvals(None)
    assert (answered["state"], answered["answer"], answered["who"]) == (
        "approved", "once", who)
    assert [r for r in world.records("ask", "admin", "intent", "outcome")
            if r[2] == "ann@partner.com"] == [
        ("ask", "host.send_email", "ann@partner.com"),
        ("admin", "approval.answer", "ann@partner.com"),
        ("intent", "host.send_email", "ann@partner.com"),
        ("outcome", "host.send_email", "ann@partner.com")]


async def test_a_rejection_reaches_the_model_and_the_audit(world: World, who: str) -> None:
    model = ScriptedModel([
        [function_call("send_email", {"to": "ann@partner.com", "subject": "x"},
                       call_id="ask-1"),
         function_call("send_email", {"to": "bea@partner.com", "subject": "x"},
                       call_id="ask-2")],
        [assistant_message("done")]])
    async with ToolGate.open(world.kernel, world.pid, who="openai-agents") as gate:
        agent = agent_for(gate, model)
        first = await run_asyncio(Runner.run, agent, "go")
        state = first.to_state()
        for item in first.interruptions:
            if item.raw_item.call_id == "ask-1":
                state.approve(item)
            else:
                state.reject(item)
        second = await run_asyncio(Runner.run, agent, state)
        assert second.final_output == "done"
        answers = {r["resource"]: (r["state"], r["who"]) for r in world.kernel.approvals(None)}
        assert answers == {"ann@partner.com": ("approved", who),
                           "bea@partner.com": ("denied", who)}
    seen = outputs(model)
    assert seen["ask-1"] == {"queued": 1}
    assert "not approved" in seen["ask-2"]
    assert world.outbox == ["ann@partner.com"]
    assert ("denied", "host.send_email", "bea@partner.com") in world.records()


async def test_a_sandboxed_tools_own_ask_waits_in_libos_queue(world: World, who: str) -> None:
    """The SDK shows its person the call (`shout` and the model's arguments), never the
    `fs.write` its code asks for: that request is libos's queue's to answer (here the
    embedder's, as the CLI or the page would), and the SDK's run waits for the call there,
    with no interruption."""
    model = ScriptedModel([
        [function_call("shout", {"path": "/shared/memo.txt", "text": "hello"}, call_id="w")],
        [assistant_message("done")]])

    def approve(pending: dict[str, Any]) -> None:
        assert (pending["syscall"], pending["resource"], pending["tool"]) == (
            "fs.write", "/shared/memo.txt", "shout")
        assert not (world.root / "shared" / "memo.txt").exists()
        world.kernel.approve(pending["id"], who="cli")

    async with ToolGate.open(world.kernel, world.pid, who="openai-agents") as gate:
        result = await run_answered(world, agent_for(gate, model), approve)
    assert result.interruptions == [] and result.final_output == "done"
    assert outputs(model)["w"] == {"written": "/shared/memo.txt"}
    assert (world.root / "shared" / "memo.txt").read_text() == "HELLO"
    [answered] = world.kernel.approvals(None)
    assert answered["who"] == "cli" != who


async def test_a_tools_two_asks_wait_in_libos_queue_in_turn(world: World) -> None:
    """A sandboxed tool that asks twice (a file, then its copy) waits in libos's queue for
    each in turn; the SDK's person is asked about neither, the model sees the refusal."""
    model = ScriptedModel([
        [function_call("shout", {"path": "/shared/a.txt", "text": "hi",
                                 "copy": "/shared/b.txt"}, call_id="w")],
        [assistant_message("done")]])
    async with ToolGate.open(world.kernel, world.pid, who="openai-agents") as gate:
        result = await run_answered(
            world, agent_for(gate, model),
            lambda pending: world.kernel.approve(pending["id"], who="cli"),
            lambda pending: world.kernel.deny(pending["id"], who="cli"))
        states = {r["resource"]: r["state"] for r in world.kernel.approvals(None)}
    assert result.interruptions == [] and result.final_output == "done"
    assert states == {"/shared/a.txt": "approved", "/shared/b.txt": "denied"}
    assert outputs(model)["w"]["error"] == "APPROVAL_DENIED"
    assert (world.root / "shared" / "a.txt").read_text() == "HI"
    assert not (world.root / "shared" / "b.txt").exists()
