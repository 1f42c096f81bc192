"""OpenAI Agents SDK: a libos process's tool table as function tools
(`pip install 'libos[openai-agents]'`).

    async with ToolGate.open(kernel, pid, who="openai-agents") as gate:
        agent = Agent(name="...", model=model, tools=function_tools(gate))
        result = await run_asyncio(Runner.run, agent, "...")

Each tool is a `FunctionTool` whose arguments, the model's JSON text, go to `Kernel.call_tool`
as they came (the SDK's strict schema mode is off: the kernel checks the schema, audited). A
result is the tool's output; a typed error, a denial included, is the output
`{"error": CODE, "message": ...}`, so the model sees it and the run goes on.

Approvals use `needs_approval`, interruptions and run-state resume. The SDK decides whether a
call needs approval before it runs it, so `needs_approval` runs the call as far as libos lets
it: it ends (no approval needed; its outcome is kept for the invocation that follows) or it
files a libos request (approval needed: the run is interrupted with a `ToolApprovalItem`,
while the call waits in the broker). `state.approve(item)` then `Runner.run(agent, state)`
approves the libos request once, under the name `openai-agents:pid N`, and the call goes on;
`state.reject(item)` denies it, found (the SDK never calls a rejected tool) the next time the
SDK looks at the tools (`is_enabled`, every turn) or calls one. The SDK asks only before a call
runs: a call that files a second request while it runs (a tool with two asks) cannot be put
to the person again, and is cancelled with a typed error the model sees.

The SDK shows its person the call alone (`ToolApprovalItem`: the tool's name and the model's
arguments), so only a request that is that very call is put to the person: a host tool's own
ask (its syscall `host.NAME`, its tool, the model's arguments by `args_hash`), unless a flow
bound asks it about the caller's labelled data, which the SDK cannot show. A request a
sandboxed tool's code files inside the call (an `fs.write` of a path the arguments may never
name) is not what the person was shown: it is left to libos's approval queue (`libos
approvals`, the web page, an approver, its deadline), and the call waits for it there.

Arguments that are not a JSON object make the SDK ask for approval without asking
`needs_approval`; approved, they reach the kernel, which refuses them (`INVALID_ARGUMENT`).
The tool list is the process's table when `function_tools` is called.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from agents import FunctionTool, RunContextWrapper
from agents.tool_context import ToolContext

from broker.adapters.gate import MAX_CALLS, Asked, Done, Outcome, ToolGate
from broker.planner.bounds import DEFAULT_MAX_ARGUMENT_CHARS
from broker.store import args_hash


def _arguments(text: str) -> Any:
    """The model's arguments: a JSON value, or the text as it came (the kernel refuses it)."""
    if len(text) > DEFAULT_MAX_ARGUMENT_CHARS:
        return text  # not worth parsing: the gate refuses it
    try:
        return json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError):
        return text


def _shown(request: dict[str, Any], name: str, params: Any) -> bool:
    """Whether the SDK's person, shown `name(params)`, is shown what `request` asks: the
    call itself (a host tool's own ask, its very arguments), not a syscall its code made,
    nor a flow bound's ask about the caller's labelled data (approving declassifies it)."""
    try:
        return (request.get("syscall") == f"host.{name}" and request.get("tool") == name
                and request.get("args_hash") == args_hash(params)
                and not request.get("labels"))
    except Exception:  # (arguments no hash takes: nothing shown binds them)
        return False


def _render(outcome: Done) -> str:
    if outcome.ok and isinstance(outcome.value, str):
        return outcome.value
    if outcome.ok:
        return json.dumps(outcome.value, ensure_ascii=False, default=repr)
    return json.dumps(outcome.error, ensure_ascii=False)


class LibosFunctionTools:
    """The gate's process's tools as the SDK's function tools, and what their calls await."""

    def __init__(self, gate: ToolGate) -> None:
        self.gate = gate
        self._ended: dict[str, Done] = {}  # calls that ended inside `needs_approval`

    def tools(self) -> list[FunctionTool]:
        return [FunctionTool(
            name=t["name"], description=t["description"] or t["name"],
            params_json_schema=t["schema"] or {"type": "object"}, strict_json_schema=False,
            on_invoke_tool=self._invoke, needs_approval=functools.partial(
                self._needs_approval, t["name"]),
            is_enabled=self._turn) for t in self.gate.tools()]

    async def _turn(self, ctx: RunContextWrapper[Any], agent: Any) -> bool:
        await self.settle(ctx)
        return True

    async def settle(self, ctx: RunContextWrapper[Any]) -> None:
        """Deny, in libos, each waiting call that the SDK's person rejected."""
        gate = self.gate
        for key, name in (await gate.from_asyncio_sync(gate.waiting_calls)).items():
            if ctx.is_tool_approved(name, key) is False:
                await gate.from_asyncio(gate.answer, key, False)

    async def _needs_approval(self, name: str, ctx: RunContextWrapper[Any],
                              params: dict[str, Any], call_id: str) -> bool:
        gate = self.gate
        if call_id in self._ended:
            return False
        if await gate.from_asyncio_sync(gate.waiting, call_id):
            return True  # asked earlier, not answered yet
        outcome = await gate.from_asyncio(gate.start, call_id, name, params)
        while isinstance(outcome, Asked):
            if _shown(outcome.request, name, params):
                return True
            # (Not what the SDK shows its person: the queue's to answer, the call waits there.)
            outcome = await gate.from_asyncio(gate.follow, call_id)
        if len(self._ended) >= MAX_CALLS:  # outcomes the SDK never came back for
            del self._ended[next(iter(self._ended))]
        self._ended[call_id] = outcome
        return False

    async def _invoke(self, ctx: ToolContext[Any], text: str) -> Any:
        await self.settle(ctx)
        key = ctx.tool_call_id
        ended = self._ended.pop(key, None)
        if ended is not None:
            return _render(ended)
        gate = self.gate
        args = _arguments(text)
        outcome: Outcome | None = await gate.from_asyncio(gate.take_up, key, ctx.tool_name, args)
        if isinstance(outcome, Asked) and not outcome.fresh:
            outcome = await gate.from_asyncio(gate.answer, key, True)  # the SDK approved it
        elif outcome is None:
            outcome = await gate.from_asyncio(gate.start, key, ctx.tool_name, args)
        while isinstance(outcome, Asked) and not _shown(outcome.request, ctx.tool_name, args):
            outcome = await gate.from_asyncio(gate.follow, key)  # (the queue's to answer)
        if isinstance(outcome, Asked):
            await gate.from_asyncio_sync(gate.drop, key)
            return json.dumps({"error": "CANCELLED", "message": (
                f"approval request {outcome.request['id']} was cancelled: this framework asks "
                "a person only before a call runs, and the call asked while it ran")})
        return _render(outcome)


def function_tools(gate: ToolGate) -> list[FunctionTool]:
    """The process's tools, for `Agent(tools=...)`."""
    return LibosFunctionTools(gate).tools()
