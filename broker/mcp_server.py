"""`libos mcp --image NAME`: serve one process's tool table to an MCP client over stdio.

The broker spawns a host-driven process of the image (capabilities: `--caps`, else what the
image declares it needs) and serves it with the `mcp` SDK's low-level server, run on trio
through anyio's trio backend:

* `tools/list` is the process's tool table (JIT tools included), JSON Schema per tool;
* `tools/call` is `Kernel.call_tool`: the same argument checks, capability checks, approvals
  and audit as a planner's call. A typed error is a tool error (`isError`) whose text is
  `{"error": CODE, "message": ...}`; so is an unknown tool or a schema failure;
* `register_tool` (when the image lists it) lets the client's model add tools; the client is
  told the list changed.

Approvals. A call that only an `ask` capability covers files an approval request. When the
client declared form elicitation, the request is put to the client's user: a standalone
`elicitation/create` request on handshake-era sessions, an `InputRequiredResult` on 2026-07-28
sessions (the client retries the call with the answer; the call itself keeps waiting in the
broker meanwhile). The answer goes through the kernel's approval API (`approve`/`deny`), so
it is audited like any other. Otherwise (or if elicitation fails) the request waits in the
approval queue for `libos approve`/`deny`, the web page, or its deadline.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from broker.errors import InvalidArgument, LibosError
from broker.kernel import Kernel
from broker.kernel.approvals import ApprovalQueue
from broker.planner.chat import to_json_text
from broker.render import inert
from broker.run import load_image, open_sandboxes, parse_caps, typed_errors

MAX_RESULT_CHARS = 1 << 20
MAX_PENDING = 64  # calls waiting for a client's retry (2026-07-28 input-required flow)
ANSWERS = ["once", "always", "deny"]

_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "libos_mcp_call", default=None)


@dataclass
class _Call:
    """A tool call in flight: the approval requests it raises, then its outcome."""

    tool: str
    events: tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]] = field(
        default_factory=lambda: trio.open_memory_channel(math.inf))
    asked: set[str] = field(default_factory=set)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: bool = False


class ElicitingFrontEnd:
    """An approval front end: a request raised by a call that an MCP client made goes to
    that call's handler, which may put it to the client. Others stay in the queue."""

    def requested(self, request: dict[str, Any], queue: ApprovalQueue) -> None:
        call = _current.get()
        if call is not None:
            call.events[0].send_nowait(("ask", request))


def approval_form(request: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The message and form schema that put a request to a person, or None when a form
    cannot hold the answer (a question with a JSON Schema: answer it with `libos answer`)."""

    def show(value: Any) -> str:
        return inert(value, 400).plain

    if request["kind"] == "capability":
        lines = [f"libos: process {request['pid']} asks to run {show(request['syscall'])} on "
                 f"{show(request['resource'])}",
                 f"tool: {show(request['tool'] or '-')}   right: {show(request['right'])}",
                 f"arguments: {show(request['args'])}"]
        if request["reason"]:
            lines.append(f"reason given: {show(request['reason'])}")
        lines.append("once: this exact call only; always: a standing grant; deny: refuse.")
        return "\n".join(lines), {
            "type": "object", "required": ["answer"],
            "properties": {"answer": {"type": "string", "enum": ANSWERS, "default": "once",
                                      "title": "Allow this call?"}}}
    question = request["question"] or {}
    if "schema" in question:
        return None
    prop: dict[str, Any] = {"type": "string", "title": "Answer"}
    if "choices" in question:
        if not all(isinstance(c, str) for c in question["choices"]):
            return None
        prop["enum"] = list(question["choices"])
    return (f"libos: process {request['pid']} asks: {show(question.get('text', ''))}",
            {"type": "object", "required": ["answer"], "properties": {"answer": prop}})


class LibosMCP:
    """The MCP server for one process of one kernel."""

    def __init__(self, kernel: Kernel, pid: int, nursery: trio.Nursery) -> None:
        self.kernel = kernel
        self.pid = pid
        self.nursery = nursery
        self.pending: dict[str, _Call] = {}
        self.bus: Any = None

    def server(self) -> Any:
        from mcp.server.lowlevel import Server
        from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler

        self.bus = InMemorySubscriptionBus()

        image = self.kernel.process(self.pid).image
        return Server(
            "libos", version="0.1.0",
            instructions=f"Tools of libos process {self.pid} (image {image.name}). Every call "
                         "is checked against the process's capabilities and audited.",
            on_list_tools=self.list_tools, on_call_tool=self.call_tool,
            on_subscriptions_listen=ListenHandler(self.bus))

    # -- handlers -----------------------------------------------------------------------------

    async def list_tools(self, ctx: Any, params: Any) -> Any:
        import mcp_types as types

        return types.ListToolsResult(tools=[
            types.Tool(name=t["name"], description=t["description"] or None,
                       input_schema=t["schema"] or {"type": "object"})
            for t in self.kernel.list_tools(self.pid)])

    async def call_tool(self, ctx: Any, params: Any) -> Any:
        state = getattr(params, "request_state", None)
        if state is not None:  # a retry that carries answers (2026-07-28)
            call = self.pending.pop(state, None)
            if call is None:
                return self._outcome(("error", {
                    "code": "NOT_FOUND", "message": "no call is waiting for that answer"}))
            for key, response in (getattr(params, "input_responses", None) or {}).items():
                if key in call.asked:
                    self._apply(key, response)
        else:
            call = _Call(params.name)
            args = dict(params.arguments or {})
            self.nursery.start_soon(self._run, call, params.name, args)
        return await self._drive(ctx, call)

    # -- calls ----------------------------------------------------------------------------------

    async def _run(self, call: _Call, name: str, args: dict[str, Any]) -> None:
        _current.set(call)
        outcome: tuple[str, Any] = ("error", {"code": "CANCELLED",
                                              "message": "the client cancelled the call"})
        with call.scope:
            try:
                outcome = ("ok", await self.kernel.call_tool(self.pid, name, args))
            except LibosError as exc:
                outcome = ("error", exc.to_wire())
            except Exception as exc:  # never the broker: a failed call is a failed call
                outcome = ("error", {"code": "INTERNAL", "message": repr(exc)[:500]})
        call.done = True
        call.events[0].send_nowait(("done", outcome))

    async def _drive(self, ctx: Any, call: _Call) -> Any:
        try:
            return await self._drive_events(ctx, call)
        except trio.Cancelled:
            if call not in self.pending.values():
                call.scope.cancel()  # the client gave up on the call: so does the broker
            raise

    async def _drive_events(self, ctx: Any, call: _Call) -> Any:
        import mcp_types as types

        while True:
            kind, value = await call.events[1].receive()
            if kind == "done":
                if value[0] == "ok" and call.tool == "register_tool":
                    await self._tools_changed(ctx)
                return self._outcome(value)
            form = approval_form(value) if self._can_elicit(ctx) else None
            if form is None:
                continue  # it waits in the approval queue (CLI, web page, deadline)
            message, schema = form
            if self._modern(ctx) and len(self.pending) >= MAX_PENDING:
                # Calls whose client never came back for the answer, and that ended anyway.
                for token in [t for t, c in self.pending.items() if c.done]:
                    del self.pending[token]
            if self._modern(ctx) and len(self.pending) < MAX_PENDING:
                token = secrets.token_urlsafe(24)
                self.pending[token] = call
                call.asked.add(value["id"])
                return types.InputRequiredResult(
                    input_requests={value["id"]: types.ElicitRequest(
                        params=types.ElicitRequestFormParams(
                            message=message, requested_schema=schema))},
                    request_state=token)
            try:
                answer = await ctx.session.elicit_form(message, schema,
                                                       related_request_id=ctx.request_id)
            except Exception:
                continue  # the client could not ask: the request stays in the queue
            self._apply(value["id"], answer)

    def _apply(self, approval_id: str, answer: Any) -> None:
        """Answer a request through the kernel's approval API (audited there)."""
        request = next((r for r in self.kernel.approvals(None) if r["id"] == approval_id),
                       None)
        if request is None or request["state"] != "pending":
            return
        action = getattr(answer, "action", None)
        content = getattr(answer, "content", None) or {}
        who = "mcp-client"
        try:
            if request["kind"] == "question":
                if action == "accept" and "answer" in content:
                    self.kernel.answer(approval_id, content["answer"], who=who)
                else:
                    self.kernel.deny(approval_id, who=who)
            elif action == "accept" and content.get("answer") in ("once", "always"):
                self.kernel.approve(approval_id, always=content["answer"] == "always", who=who)
            else:  # declined, dismissed or "deny": fail closed
                self.kernel.deny(approval_id, who=who)
        except LibosError:
            pass  # answered meanwhile elsewhere, or an answer it refuses (audited)

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _outcome(outcome: tuple[str, Any]) -> Any:
        import mcp_types as types

        ok, value = outcome
        if ok == "ok":
            return types.CallToolResult(
                content=[types.TextContent(text=to_json_text(value, MAX_RESULT_CHARS))],
                structured_content=json.loads(to_json_text(value, MAX_RESULT_CHARS))
                if isinstance(value, dict) else None)
        error = {"error": value["code"], "message": value["message"]}
        return types.CallToolResult(content=[types.TextContent(text=json.dumps(error))],
                                    structured_content=error, is_error=True)

    @staticmethod
    def _can_elicit(ctx: Any) -> bool:
        caps = getattr(ctx.session, "client_capabilities", None)
        elicitation = getattr(caps, "elicitation", None)
        return elicitation is not None and (
            getattr(elicitation, "form", None) is not None
            or getattr(elicitation, "url", None) is None)

    @staticmethod
    def _modern(ctx: Any) -> bool:
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS

        return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS

    async def _tools_changed(self, ctx: Any) -> None:
        """Tell the client its tool list changed: a notification on handshake-era sessions,
        an event on `subscriptions/listen` streams on 2026-07-28 ones."""
        import mcp_types as types
        from mcp.server.subscriptions import ToolsListChanged

        if self._modern(ctx):
            await self.bus.publish(ToolsListChanged())
            return
        with contextlib.suppress(Exception):
            await ctx.session.send_notification(types.ToolListChangedNotification())


async def serve_stdio(db: Path, image: str, caps: list[str] | None) -> int:
    """Serve a new process of IMAGE over stdio until the client hangs up."""
    with typed_errors():
        return await _serve(db, image, caps)


async def _serve(db: Path, image: str, caps: list[str] | None) -> int:
    try:
        from mcp.server.stdio import stdio_server
    except ImportError:
        raise InvalidArgument("libos mcp needs the mcp extra: pip install 'libos[mcp]'"
                              ) from None
    async with open_sandboxes(db) as sandboxes, Kernel.open(
            db, sandboxes=sandboxes, approvers=[ElicitingFrontEnd()]) as kernel:
        spec = await load_image(kernel, image)
        granted = parse_caps(caps)
        pid = kernel.spawn(spec.name, caps=list(spec.needs) if granted is None else granted)
        try:
            async with trio.open_nursery() as nursery:
                server = LibosMCP(kernel, pid, nursery).server()
                async with stdio_server() as (read, write):
                    await server.run(read, write, server.create_initialization_options())
                nursery.cancel_scope.cancel()
        finally:
            if kernel.process(pid).alive:
                kernel.kill(pid, "mcp session ended")
    return 0
