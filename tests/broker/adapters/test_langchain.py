"""LangChain drives a real kernel through `langchain_tools`: langchain-core's own fake chat
model makes the calls (a host tool and a TypeScript tool in Deno) in a LangGraph graph, libos
checks, asks and audits them, and an approval is a graph interrupt the person resumes."""

from __future__ import annotations

import json
import uuid
from typing import Any

import trio
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import Command, Send

from broker.adapters.gate import ToolGate, run_asyncio, run_sync
from broker.adapters.langchain import langchain_tools
from tests.broker.adapters.conftest import World


def call(name: str, args: Any, key: str) -> dict[str, Any]:
    return {"name": name, "args": args, "id": key, "type": "tool_call"}


def graph_for(gate: ToolGate, *turns: list[dict[str, Any]]) -> Any:
    """model → tools → model ... until a reply without calls; the model is scripted. Each
    tool call is a task of its own (`Send`, as LangGraph's prebuilt agents do), so calls of
    one reply that ask are interrupts side by side."""
    model = FakeMessagesListChatModel(responses=[
        *(AIMessage(content="", tool_calls=calls) for calls in turns), AIMessage("done")])

    def think(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    def route(state: MessagesState) -> Any:
        return [Send("tools", {"__type": "tool_call_with_context", "tool_call": c,
                               "state": state})
                for c in state["messages"][-1].tool_calls] or END

    graph = StateGraph(MessagesState)
    graph.add_node("model", think)
    graph.add_node("tools", ToolNode(langchain_tools(gate)))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, ["tools", END])
    graph.add_edge("tools", "model")
    return graph.compile(checkpointer=InMemorySaver())


def returned(state: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """What each tool call returned to the model: (status, content), by call id."""
    seen = {}
    for message in state["messages"]:
        if isinstance(message, ToolMessage):
            try:
                content = json.loads(message.content)
            except ValueError:
                content = message.content
            seen[message.tool_call_id] = (message.status, content)
    return seen


def thread() -> dict[str, Any]:
    return {"configurable": {"thread_id": uuid.uuid4().hex}}


async def test_model_calls_are_checked_and_audited_by_the_kernel(world: World) -> None:
    async with ToolGate.open(world.kernel, world.pid, who="langchain") as gate:
        graph = graph_for(gate, [
            call("send_email", {"to": "bob@example.com", "subject": "hi"}, "a"),
            call("send_email", {"to": "eve@evil.com", "subject": "hi"}, "b"),
            call("shout", {"path": "/notes/n.txt", "text": "ship it"}, "c"),
            call("shout", {"path": "/etc/passwd", "text": "x"}, "d")])
        state = await run_sync(graph.invoke, {"messages": [("user", "go")]}, thread())
    assert state["messages"][-1].content == "done"
    seen = returned(state)
    assert seen["a"] == ("success", {"queued": 1})
    assert seen["b"] == ("error", {"error": "NOT_CAPABLE",
                                   "message": "no capability for email:send on 'eve@evil.com'"})
    assert seen["c"] == ("success", {"written": "/notes/n.txt"})
    assert (world.root / "notes" / "n.txt").read_text() == "SHIP IT"  # Deno ran it
    assert seen["d"][0] == "error" and seen["d"][1]["error"] == "NOT_CAPABLE"
    assert world.outbox == ["bob@example.com"]
    assert ("denied", "host.send_email", "eve@evil.com") in world.records()
    assert ("denied", "fs.write", "/etc/passwd") in world.records()
    assert world.kernel.verify_audit()[1] == []


async def test_malformed_arguments_are_a_typed_error_the_model_sees(world: World) -> None:
    """Every key the model sent reaches the kernel's schema check: none is dropped on the way
    (LangChain's own parsing would drop "extra" and let the call through)."""
    async with ToolGate.open(world.kernel, world.pid, who="langchain") as gate:
        graph = graph_for(gate, [
            call("send_email", {"subject": "x"}, "a"),
            call("send_email", {"to": 5, "subject": "x"}, "b"),
            call("shout", {"path": "/notes/x", "text": "y", "extra": 1}, "c"),
            call("send_email", {"to": "bob@example.com", "subject": "ok"}, "d")])
        state = await run_sync(graph.invoke, {"messages": [("user", "go")]}, thread())
        [tool] = [t for t in langchain_tools(gate) if t.name == "send_email"]
        direct = await run_sync(tool.invoke, "to bob")  # not an object: LangChain passes it on
    seen = returned(state)
    for key in "abc":
        assert seen[key][0] == "error" and seen[key][1]["error"] == "INVALID_ARGUMENT", key
    assert seen["d"] == ("success", {"queued": 1})
    assert json.loads(direct)["error"] == "INVALID_ARGUMENT"
    assert world.outbox == ["bob@example.com"]
    assert not (world.root / "notes" / "x").exists()
    failed = [r for r in world.kernel.audit(world.pid)
              if r["detail"].get("error") == "INVALID_ARGUMENT"]
    assert len(failed) == 4


async def test_an_ask_is_a_graph_interrupt_the_person_resumes(world: World) -> None:
    config = thread()
    async with ToolGate.open(world.kernel, world.pid, who="langchain") as gate:
        graph = graph_for(gate, [
            call("send_email", {"to": "ann@partner.com", "subject": "offer"}, "yes"),
            call("send_email", {"to": "bea@partner.com", "subject": "offer"}, "no")])
        state = await run_sync(graph.invoke, {"messages": [("user", "go")]}, config)
        asked = {i.value["libos"]["resource"]: i.id for i in state["__interrupt__"]}
        assert set(asked) == {"ann@partner.com", "bea@partner.com"}
        assert len(world.kernel.approvals()) == 2 and world.outbox == []
        answers = {asked["ann@partner.com"]: True, asked["bea@partner.com"]: {"approve": False}}
        state = await run_sync(graph.invoke, Command(resume=answers), config)
        assert state["messages"][-1].content == "done"
    seen = returned(state)
    assert seen["yes"] == ("success", {"queued": 1})
    assert seen["no"][0] == "error" and seen["no"][1]["error"] == "APPROVAL_DENIED"
    assert world.outbox == ["ann@partner.com"]
    who = f"langchain:pid {world.pid}"
    answers_given = {r["resource"]: (r["state"], r["who"]) for r in world.kernel.approvals(None)}
    assert answers_given == {"ann@partner.com": ("approved", who),
                             "bea@partner.com": ("denied", who)}
    assert ("denied", "host.send_email", "bea@partner.com") in world.records()


async def test_a_tool_that_asks_twice_interrupts_twice_in_order(world: World) -> None:
    """LangGraph runs the node again on each resume and matches interrupts by their order:
    the second answer must go to the second request, never to the first."""
    config = thread()
    async with ToolGate.open(world.kernel, world.pid, who="langchain") as gate:
        graph = graph_for(gate, [call("shout", {"path": "/shared/a.txt", "text": "hi",
                                                "copy": "/shared/b.txt"}, "w")])
        state = await run_sync(graph.invoke, {"messages": [("user", "go")]}, config)
        [first] = state["__interrupt__"]
        assert first.value["libos"]["resource"] == "/shared/a.txt"
        state = await run_sync(graph.invoke, Command(resume=True), config)
        [second] = state["__interrupt__"]
        assert second.value["libos"]["resource"] == "/shared/b.txt"
        assert (world.root / "shared" / "a.txt").read_text() == "HI"
        state = await run_sync(graph.invoke, Command(resume=False), config)
        assert state["messages"][-1].content == "done"
    assert returned(state)["w"][1]["error"] == "APPROVAL_DENIED"
    assert not (world.root / "shared" / "b.txt").exists()
    states = {r["resource"]: r["state"] for r in world.kernel.approvals(None)}
    assert states == {"/shared/a.txt": "approved", "/shared/b.txt": "denied"}


async def test_outside_a_graph_the_request_waits_in_libos_queue(world: World) -> None:
    """No graph to interrupt (here: the async path, straight from asyncio): the request is
    libos's own, answered like any other (here by the host's API)."""
    async with ToolGate.open(world.kernel, world.pid, who="langchain") as gate, \
            trio.open_nursery() as nursery:
        [tool] = [t for t in langchain_tools(gate) if t.name == "send_email"]
        got: list[Any] = []

        async def use() -> None:
            got.append(await run_asyncio(tool.ainvoke, call(
                "send_email", {"to": "ann@partner.com", "subject": "x"}, "k")))

        nursery.start_soon(use)
        while not world.kernel.approvals():
            await trio.sleep(0.01)
        [request] = world.kernel.approvals()
        world.kernel.approve(request["id"], who="someone")
    [message] = got
    assert (message.status, json.loads(message.content)) == ("success", {"queued": 1})
    assert world.outbox == ["ann@partner.com"]


async def test_an_answer_naming_another_request_denies(world: World) -> None:
    """An answer can name the request it is for; one that names another request (an answer
    that reached the wrong call) denies, never approves."""
    config = thread()
    async with ToolGate.open(world.kernel, world.pid, who="langchain") as gate:
        graph = graph_for(gate, [call("shout", {"path": "/shared/a.txt", "text": "hi",
                                                "copy": "/shared/b.txt"}, "w")])
        state = await run_sync(graph.invoke, {"messages": [("user", "go")]}, config)
        first = state["__interrupt__"][0].value["libos"]["id"]
        state = await run_sync(graph.invoke, Command(resume={"approve": True, "id": first}),
                               config)
        assert state["__interrupt__"][0].value["libos"]["resource"] == "/shared/b.txt"
        state = await run_sync(graph.invoke, Command(resume={"approve": True, "id": first}),
                               config)
    assert returned(state)["w"][1]["error"] == "APPROVAL_DENIED"
    assert (world.root / "shared" / "a.txt").read_text() == "HI"
    assert not (world.root / "shared" / "b.txt").exists()
