"""LangChain: a libos process's tool table as `BaseTool`s (`pip install 'libos[langchain]'`,
or `[langgraph]` for approvals as graph interrupts).

    async with ToolGate.open(kernel, pid, who="langchain") as gate:
        tools = langchain_tools(gate)   # for ToolNode, create_agent, model.bind_tools, ...

A call's arguments go to `Kernel.call_tool` exactly as the model gave them (LangChain's own
parsing, which would drop keys the schema does not name, is bypassed: the kernel checks the
schema, audited). A typed error, a denial included, is a `ToolException` the tool handles:
the model gets a `ToolMessage` with `status="error"` and content
`{"error": CODE, "message": ...}`, and the run goes on.

Approvals. Inside a LangGraph run (with a checkpointer) a call that only an `ask` capability
covers is a graph interrupt whose value is the libos request (`{"libos": {...}}`): the graph
pauses while the call waits in the broker, and `Command(resume=True)` (or
`{"approve": True}`, or `{"approve": True, "id": REQUEST_ID}` naming the request shown)
approves the request once, under the name `langchain:pid N`; any other resume value denies
it, and so does one naming another request. LangGraph runs the node again on resume and
matches interrupts by their order in it, so each call replays the interrupts it already had
before the one it waits on. Several calls asking at once in one node task (a `ToolNode` given
several calls in one step) share that order, and which call asks first is a race: give each
call a task of its own (`Send`, as LangGraph's prebuilt agents do), or answer naming the
request, so that an answer can only ever deny the wrong one. A request answered elsewhere
while the graph paused on it (`libos approve`) keeps its interrupt's place: the resume value
is its own, and a request the call filed since is an interrupt of its own.
Outside a graph (or without LangGraph installed) the request waits in libos's approval
queue, answered with `libos approve`, the web page or an approver, or denied at its deadline.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from langchain_core.tools import BaseTool, ToolException

from broker.adapters.gate import Asked, Done, Outcome, ToolGate, request_summary

RESUME_SCHEMA = {"anyOf": [{"type": "boolean"}, {"type": "object", "properties": {
    "approve": {"type": "boolean"}, "id": {"type": "string"}}}]}


def _graph_interrupt() -> Any:
    """LangGraph's `interrupt` when this call runs inside a graph's node, else None."""
    try:
        from langgraph._internal._constants import CONFIG_KEY_SCRATCHPAD
        from langgraph.config import get_config
        from langgraph.types import interrupt
    except ImportError:
        return None
    try:
        configurable = get_config().get("configurable", {})
    except RuntimeError:  # not inside a runnable
        return None
    return interrupt if CONFIG_KEY_SCRATCHPAD in configurable else None


def _approved(value: Any, request_id: str) -> bool:
    """`True`, or `{"approve": True}` naming no request or this one: anything else denies."""
    if isinstance(value, dict):
        return value.get("approve") is True and value.get("id", request_id) == request_id
    return value is True


class LibosTool(BaseTool):
    """One tool of the gate's process."""

    gate: Any  # ToolGate
    handle_tool_error: bool = True
    answered: dict[str, list[str | None]]  # per call: the requests answered by interrupts

    def _to_args_and_kwargs(self, tool_input: str | dict[str, Any],
                            tool_call_id: str | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (tool_input, tool_call_id or f"langchain-{uuid.uuid4().hex}"), {}

    def _run(self, tool_input: Any, key: str) -> Any:
        gate: ToolGate = self.gate
        outcome, asked = gate.blocking(self._step, tool_input, key), 0
        while isinstance(outcome, Asked):
            follow, asked = self._answer(outcome, key, asked)
            outcome = gate.blocking(*follow)
        return self._result(outcome, key)

    async def _arun(self, tool_input: Any, key: str) -> Any:
        gate: ToolGate = self.gate
        outcome, asked = await gate.from_asyncio(self._step, tool_input, key), 0
        while isinstance(outcome, Asked):
            follow, asked = self._answer(outcome, key, asked)
            outcome = await gate.from_asyncio(*follow)
        return self._result(outcome, key)

    async def _step(self, tool_input: Any, key: str) -> Outcome:
        """Take up the call LangGraph runs again (same id, same arguments), or start it."""
        outcome = await self.gate.take_up(key, self.name, tool_input)
        if outcome is not None:
            return outcome
        self.answered.pop(key, None)
        return await self.gate.start(key, self.name, tool_input)

    def _answer(self, outcome: Asked, key: str, asked: int) -> tuple[tuple[Any, ...], int]:
        """Put the request to the graph's person (an interrupt), or leave it to libos's queue.
        `asked`: the interrupts this run of the node has had. Returns the gate call that
        follows the call to its next stop, and the interrupts had now."""
        interrupt = _graph_interrupt()
        if interrupt is None:
            return (self.gate.follow, key), asked
        done = self.answered.setdefault(key, [])
        for earlier in done[asked:]:  # a node run again: its earlier interrupts, in order
            interrupt({"libos": {"id": earlier}}, response_schema=RESUME_SCHEMA)
        if outcome.fresh:  # the request last shown was answered elsewhere: its resume value
            interrupt({"libos": {"id": None}}, response_schema=RESUME_SCHEMA)  # is its own,
            done.append(None)  # never this request's (the index is the shown one's)
        answer = interrupt({"libos": request_summary(outcome.request)},
                           response_schema=RESUME_SCHEMA)  # raises to pause the graph
        done.append(outcome.request["id"])
        return (self.gate.answer, key, _approved(answer, outcome.request["id"])), len(done)

    def _result(self, outcome: Outcome, key: str) -> Any:
        self.answered.pop(key, None)
        assert isinstance(outcome, Done)
        if not outcome.ok:
            raise ToolException(json.dumps(outcome.error, ensure_ascii=False))
        return outcome.value


def langchain_tools(gate: ToolGate) -> list[BaseTool]:
    """The process's tools (its table when called), as LangChain tools."""
    return [LibosTool(name=t["name"], description=t["description"] or t["name"],
                      args_schema=t["schema"] or {"type": "object"}, gate=gate, answered={})
            for t in gate.tools()]
