"""Pydantic AI drives a real kernel through `LibosToolset`: its own `FunctionModel` makes the
calls (a host tool and a TypeScript tool in Deno), libos checks, asks and audits them, and an
approval is a deferred tool call that the person answers in Pydantic AI."""

from __future__ import annotations

import json
from typing import Any

from pydantic_ai import Agent
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.tools import DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied

from broker.adapters.gate import ToolGate, run_asyncio
from broker.adapters.pydantic_ai import LibosToolset
from broker.store.audit import CLOSES
from tests.broker.adapters.conftest import World


class Script:
    """A model that answers with the next scripted parts, and keeps what each tool call
    returned to it (by call id)."""

    def __init__(self, *turns: list[Any]) -> None:
        self.turns = list(turns)
        self.returned: dict[str, Any] = {}
        self.outcomes: dict[str, str] = {}
        self.tools: list[str] = []

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.tools = sorted(t.name for t in info.function_tools)
        for message in messages:
            if isinstance(message, ModelRequest):
                for part in message.parts:
                    if isinstance(part, ToolReturnPart):
                        self.returned[part.tool_call_id] = part.content
                        self.outcomes[part.tool_call_id] = part.outcome
        return ModelResponse(parts=self.turns.pop(0) if self.turns else [TextPart("done")])


def agent_for(gate: ToolGate, script: Script) -> Agent[None, Any]:
    return Agent(FunctionModel(script), toolsets=[LibosToolset(gate)],
                 output_type=[str, DeferredToolRequests])


def error(text: Any) -> dict[str, Any]:
    return json.loads(text)


async def test_model_calls_are_checked_and_audited_by_the_kernel(world: World) -> None:
    script = Script([
        ToolCallPart("send_email", {"to": "bob@example.com", "subject": "hi"}, tool_call_id="a"),
        ToolCallPart("send_email", {"to": "eve@evil.com", "subject": "hi"}, tool_call_id="b"),
        ToolCallPart("shout", {"path": "/notes/n.txt", "text": "ship it"}, tool_call_id="c"),
        ToolCallPart("shout", {"path": "/etc/passwd", "text": "x"}, tool_call_id="d"),
    ])
    async with ToolGate.open(world.kernel, world.pid, who="pydantic-ai") as gate:
        result = await run_asyncio(agent_for(gate, script).run, "go")
    assert result.output == "done"
    assert script.tools == ["send_email", "shout"]
    assert script.returned["a"] == {"queued": 1}
    assert error(script.returned["b"]) == {
        "error": "NOT_CAPABLE", "message": "no capability for email:send on 'eve@evil.com'"}
    assert script.returned["c"] == {"written": "/notes/n.txt"}
    assert (world.root / "notes" / "n.txt").read_text() == "SHIP IT"  # Deno ran it
    assert error(script.returned["d"])["error"] == "NOT_CAPABLE"
    assert script.outcomes["b"] == script.outcomes["d"] == "failed"
    assert world.outbox == ["bob@example.com"]
    assert ("denied", "host.send_email", "eve@evil.com") in world.records()
    assert ("denied", "fs.write", "/etc/passwd") in world.records()
    assert world.kernel.verify_audit()[1] == []


async def test_malformed_arguments_are_a_typed_error_the_model_sees(world: World) -> None:
    script = Script([
        ToolCallPart("send_email", "{not json", tool_call_id="a"),
        ToolCallPart("send_email", "[1, 2]", tool_call_id="b"),
        ToolCallPart("send_email", {"to": 5, "subject": "x"}, tool_call_id="c"),
        ToolCallPart("shout", {"path": "/notes/x", "text": "y", "extra": 1}, tool_call_id="d"),
        ToolCallPart("send_email", {"to": "bob@example.com", "subject": "ok"}, tool_call_id="e"),
    ])
    async with ToolGate.open(world.kernel, world.pid, who="pydantic-ai") as gate:
        result = await run_asyncio(agent_for(gate, script).run, "go")
    assert result.output == "done"  # the run goes on
    for key in "abcd":
        assert error(script.returned[key])["error"] == "INVALID_ARGUMENT", key
    assert script.returned["e"] == {"queued": 1}  # a good call beside them still works
    assert world.outbox == ["bob@example.com"]
    assert not (world.root / "notes" / "x").exists()
    # The kernel saw each malformed call, and its record says it failed its schema.
    failed = [r for r in world.kernel.audit(world.pid)
              if r["phase"] in CLOSES and r["detail"].get("error") == "INVALID_ARGUMENT"]
    assert len(failed) == 4


async def test_an_ask_is_a_deferred_call_the_person_approves(world: World) -> None:
    call = ToolCallPart("send_email", {"to": "ann@partner.com", "subject": "offer"},
                        tool_call_id="ask-1")
    script = Script([call])
    async with ToolGate.open(world.kernel, world.pid, who="pydantic-ai") as gate:
        agent = agent_for(gate, script)
        first = await run_asyncio(agent.run, "go")
        assert isinstance(first.output, DeferredToolRequests)
        assert [c.tool_call_id for c in first.output.approvals] == ["ask-1"]
        shown = first.output.metadata["ask-1"]["libos"]
        [pending] = world.kernel.approvals()
        assert shown["id"] == pending["id"] and shown["resource"] == "ann@partner.com"
        assert shown["args"] == {"to": "ann@partner.com", "subject": "offer"}
        assert world.outbox == []  # nothing ran yet
        second = await run_asyncio(
            agent.run, message_history=first.all_messages(),
            deferred_tool_results=DeferredToolResults(approvals={"ask-1": True}))
    assert second.output == "done"
    assert script.returned["ask-1"] == {"queued": 1}
    assert world.outbox == ["ann@partner.com"]
    [answered] = world.kernel.approvals(None)
    assert (answered["state"], answered["answer"]) == ("approved", "once")
    assert answered["who"] == f"pydantic-ai:pid {world.pid}"
    assert [r for r in world.records("ask", "admin", "intent", "outcome")
            if r[2] == "ann@partner.com"] == [
        ("ask", "host.send_email", "ann@partner.com"),
        ("admin", "approval.answer", "ann@partner.com"),
        ("intent", "host.send_email", "ann@partner.com"),
        ("outcome", "host.send_email", "ann@partner.com")]


async def test_a_denial_reaches_the_model_and_the_audit(world: World) -> None:
    script = Script([ToolCallPart("send_email", {"to": "ann@partner.com", "subject": "x"},
                                  tool_call_id="ask-1")])
    async with ToolGate.open(world.kernel, world.pid, who="pydantic-ai") as gate:
        agent = agent_for(gate, script)
        first = await run_asyncio(agent.run, "go")
        second = await run_asyncio(
            agent.run, message_history=first.all_messages(),
            deferred_tool_results=DeferredToolResults(
                approvals={"ask-1": ToolDenied("not to partners")}))
        assert second.output == "done"
        [answered] = world.kernel.approvals(None)
        assert (answered["state"], answered["answer"]) == ("denied", "deny")
        assert answered["who"] == f"pydantic-ai:pid {world.pid}"
    assert script.returned["ask-1"] == "not to partners"
    assert script.outcomes["ask-1"] == "denied"
    assert world.outbox == []
    assert ("denied", "host.send_email", "ann@partner.com") in world.records()


async def test_approved_with_other_arguments_is_asked_again(world: World) -> None:
    """The person's answer binds to the request they were shown: arguments changed on
    approval are a new call, and libos asks about exactly those."""
    script = Script([ToolCallPart("send_email", {"to": "ann@partner.com", "subject": "x"},
                                  tool_call_id="ask-1")])
    async with ToolGate.open(world.kernel, world.pid, who="pydantic-ai") as gate:
        agent = agent_for(gate, script)
        first = await run_asyncio(agent.run, "go")
        changed = {"to": "bea@partner.com", "subject": "x"}
        second = await run_asyncio(
            agent.run, message_history=first.all_messages(),
            deferred_tool_results=DeferredToolResults(
                approvals={"ask-1": ToolApproved(override_args=changed)}))
        assert isinstance(second.output, DeferredToolRequests)
        assert second.output.metadata["ask-1"]["libos"]["resource"] == "bea@partner.com"
        states = {r["resource"]: r["state"] for r in world.kernel.approvals(None)}
        assert states == {"ann@partner.com": "cancelled", "bea@partner.com": "pending"}
    assert world.outbox == []
    # The gate closed with the call still waiting: its request died with it.
    assert {r["state"] for r in world.kernel.approvals(None)} == {"cancelled"}


async def test_a_sandboxed_tools_own_ask_is_deferred_too(world: World) -> None:
    """The request can come from inside a tool: the TypeScript tool's fs.write on a path
    behind a person. The person sees that syscall and path, not just the tool's name."""
    script = Script([ToolCallPart("shout", {"path": "/shared/memo.txt", "text": "hello"},
                                  tool_call_id="w")])
    async with ToolGate.open(world.kernel, world.pid, who="pydantic-ai") as gate:
        agent = agent_for(gate, script)
        first = await run_asyncio(agent.run, "go")
        shown = first.output.metadata["w"]["libos"]
        assert (shown["syscall"], shown["resource"], shown["tool"]) == (
            "fs.write", "/shared/memo.txt", "shout")
        assert not (world.root / "shared" / "memo.txt").exists()
        await run_asyncio(agent.run, message_history=first.all_messages(),
                          deferred_tool_results=DeferredToolResults(approvals={"w": True}))
    assert script.returned["w"] == {"written": "/shared/memo.txt"}
    assert (world.root / "shared" / "memo.txt").read_text() == "HELLO"


async def test_a_second_ask_while_running_is_deferred_again(world: World) -> None:
    """A tool that asks twice: approved once, the same call comes back deferred with its
    second request, and only its second approval lets the copy be written."""
    script = Script([ToolCallPart("shout", {"path": "/shared/a.txt", "text": "hi",
                                            "copy": "/shared/b.txt"}, tool_call_id="w")])
    async with ToolGate.open(world.kernel, world.pid, who="pydantic-ai") as gate:
        agent = agent_for(gate, script)
        first = await run_asyncio(agent.run, "go")
        assert first.output.metadata["w"]["libos"]["resource"] == "/shared/a.txt"
        approve = DeferredToolResults(approvals={"w": True})
        second = await run_asyncio(agent.run, message_history=first.all_messages(),
                                   deferred_tool_results=approve)
        assert second.output.metadata["w"]["libos"]["resource"] == "/shared/b.txt"
        assert (world.root / "shared" / "a.txt").read_text() == "HI"
        assert not (world.root / "shared" / "b.txt").exists()
        third = await run_asyncio(agent.run, message_history=second.all_messages(),
                                  deferred_tool_results=approve)
        assert third.output == "done"
    assert script.returned["w"] == {"written": "/shared/a.txt"}
    assert (world.root / "shared" / "b.txt").read_text() == "HI"
    assert {r["state"] for r in world.kernel.approvals(None)} == {"approved"}


async def test_an_answer_given_elsewhere_meanwhile_is_not_run_twice(world: World) -> None:
    """While the run is paused, someone answers the request at `libos approve` (here the
    host's API, "always"): the call goes on in the broker. Resumed, the tool gets that call's
    outcome; it is not run a second time."""
    script = Script([ToolCallPart("send_email", {"to": "ann@partner.com", "subject": "x"},
                                  tool_call_id="ask-1")])
    async with ToolGate.open(world.kernel, world.pid, who="pydantic-ai") as gate:
        agent = agent_for(gate, script)
        first = await run_asyncio(agent.run, "go")
        [request] = world.kernel.approvals()
        world.kernel.approve(request["id"], always=True, who="cli:ops")
        second = await run_asyncio(
            agent.run, message_history=first.all_messages(),
            deferred_tool_results=DeferredToolResults(approvals={"ask-1": True}))
    assert second.output == "done"
    assert script.returned["ask-1"] == {"queued": 1}
    assert world.outbox == ["ann@partner.com"]  # once
    [answered] = world.kernel.approvals(None)
    assert answered["who"] == "cli:ops"
