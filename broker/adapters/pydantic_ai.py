"""Pydantic AI: a libos process's tool table as a toolset (`pip install 'libos[pydantic-ai]'`).

    async with ToolGate.open(kernel, pid, who="pydantic-ai") as gate:
        agent = Agent(model, toolsets=[LibosToolset(gate)],
                      output_type=[str, DeferredToolRequests])
        result = await run_asyncio(agent.run, "...")

Every call the agent's model makes is `Kernel.call_tool` for the process: the arguments are
checked against the tool's schema by the kernel (Pydantic AI's own validation is a
pass-through, so arguments that are not even JSON reach the kernel too, and are refused and
audited there). A typed error, a denial included, is a `ToolFailed` whose message is
`{"error": CODE, "message": ...}`: the model sees it and the run goes on.

Approvals are deferred tools. A call that only an `ask` capability covers raises
`ApprovalRequired` with the libos request in its metadata (`{"libos": {...}}`): the run ends
with `DeferredToolRequests` while the call waits in the broker. Resumed with the call
approved, the same call (same id, same arguments) gets its request approved once, under the
name `pydantic-ai:pid N`; a call approved with other arguments (`ToolApproved(override_args=...)`)
is a new call, asked afresh. A denial (`ToolDenied`) never reaches a tool: the toolset finds it
in the run's messages at the next step and denies the request, so libos's audit says who said
no. A call the next run does not take up is cancelled when the gate closes.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_ai import ToolDefinition
from pydantic_ai.exceptions import ApprovalRequired, ToolFailed
from pydantic_ai.messages import ModelRequest, ToolReturnPart
from pydantic_ai.tools import RunContext
from pydantic_ai.toolsets import AbstractToolset
from pydantic_ai.toolsets.abstract import ToolsetTool

from broker.adapters.gate import Asked, Done, Outcome, ToolGate, request_summary
from broker.planner.bounds import DEFAULT_MAX_ARGUMENT_CHARS

# A key no JSON object can have: marks arguments that were not a JSON object at all.
_RAW = object()


class _PassThrough:
    """Pydantic AI's argument validator for a libos tool: it checks nothing, so that every
    argument, malformed ones included, reaches the kernel's schema check and its audit."""

    def validate_json(self, input: str | bytes | bytearray, **_: Any) -> dict[Any, Any]:
        if len(input) > DEFAULT_MAX_ARGUMENT_CHARS:  # not worth parsing: the gate refuses it
            return {_RAW: "x" * (DEFAULT_MAX_ARGUMENT_CHARS + 1)}
        try:
            value = json.loads(input)
        except (ValueError, RecursionError):
            return {_RAW: input if isinstance(input, str) else bytes(input).decode(
                "utf-8", "replace")}
        return self.validate_python(value)

    def validate_python(self, input: Any, **_: Any) -> dict[Any, Any]:
        return input if isinstance(input, dict) else {_RAW: input}


def failure(done: Done) -> ToolFailed:
    return ToolFailed(json.dumps(done.error, ensure_ascii=False))


class LibosToolset(AbstractToolset[Any]):
    """The tools of the gate's process, as Pydantic AI sees them."""

    def __init__(self, gate: ToolGate, *, id: str | None = "libos") -> None:
        self.gate = gate
        self._id = id

    @property
    def id(self) -> str | None:
        return self._id

    async def get_tools(self, ctx: RunContext[Any]) -> dict[str, ToolsetTool[Any]]:
        await self._settle_denials(ctx)
        listed = await self.gate.from_asyncio_sync(self.gate.tools)
        return {t["name"]: ToolsetTool(
            toolset=self, max_retries=0, args_validator=_PassThrough(),
            tool_def=ToolDefinition(name=t["name"], description=t["description"] or None,
                                    parameters_json_schema=t["schema"] or {"type": "object"}))
            for t in listed}

    async def call_tool(self, name: str, tool_args: dict[Any, Any], ctx: RunContext[Any],
                        tool: ToolsetTool[Any]) -> Any:
        args: Any = tool_args.get(_RAW, tool_args) if _RAW in tool_args else tool_args
        key = ctx.tool_call_id or ""
        gate = self.gate
        outcome = await gate.from_asyncio(gate.take_up, key, name, args) \
            if ctx.tool_call_approved else None
        if isinstance(outcome, Asked) and not outcome.fresh:  # the request the person saw
            outcome = await gate.from_asyncio(gate.answer, key, True)
        elif outcome is None:  # a new call, or one approved with other arguments: asked afresh
            outcome = await gate.from_asyncio(gate.start, key, name, args)
        return self._outcome(outcome)

    @staticmethod
    def _outcome(outcome: Outcome) -> Any:
        if isinstance(outcome, Asked):
            raise ApprovalRequired(metadata={"libos": request_summary(outcome.request)})
        if not outcome.ok:
            raise failure(outcome)
        return outcome.value

    async def _settle_denials(self, ctx: RunContext[Any]) -> None:
        """A call the person denied never reaches the toolset: its `denied` return in the
        run's messages is how the toolset learns of it, and the request is denied in libos."""
        denied = [part.tool_call_id for message in ctx.messages
                  if isinstance(message, ModelRequest) for part in message.parts
                  if isinstance(part, ToolReturnPart) and part.outcome == "denied"]
        for key in denied:
            if await self.gate.from_asyncio_sync(self.gate.waiting, key):
                await self.gate.from_asyncio(self.gate.answer, key, False)
