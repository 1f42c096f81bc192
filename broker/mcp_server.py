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

Approvals. A call that only an `ask` capability covers files an approval request. A request
goes to the client only if the process this server serves asked it, from a call this client
made (a child the call spawns runs in a context of its own and is never routed here). When
the client declared form elicitation, the request is put to the client's user: a standalone
`elicitation/create` request on handshake-era sessions, an `InputRequiredResult` on 2026-07-28
sessions (the client retries the call with the answer; the call itself keeps waiting in the
broker meanwhile). A form shows the request whole (every string inert, the arguments with
their hash) or, past `MAX_FORM_MESSAGE` characters, offers only "deny" and says where to see
the whole request. Whatever the client sends back that the form did not offer is a denial.
The answer goes through the kernel's approval API, named `mcp:<client name>:pid N`, so it is
audited like any other; each elicitation's outcome (accepted, declined, dismissed, failed) is
a record too; a form waits for its reply no longer than its request's deadline or its call,
and a reply the SDK cannot read fails it (`broker.mcp_unreadable`). Otherwise (or if
elicitation fails) the request waits in the approval queue for
`libos approve`/`deny`, the web page, or its deadline. A call the client cancels, or a session
that ends, settles the requests it raised as cancelled: nobody is left to run them.

`tools/list` is the process's `tool.list` syscall, audited like a planner's listing; each
tool's description and every string of its schema (`broker.inert.shown_schema`) are inert.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import secrets
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from broker.approvals.scopes import scope_choices
from broker.errors import InvalidArgument, LibosError
from broker.inert import shown, shown_lines, shown_schema
from broker.kernel import Kernel
from broker.kernel.approvals import ApprovalQueue
from broker.mcp_forms import Form, approval_form
from broker.mcp_refusal import refuse_stdio
from broker.mcp_unreadable import Answering
from broker.mcp_writable import Writable
from broker.planner.chat import to_json_text
from broker.run import load_image, open_sandboxes, parse_caps, typed_errors
from broker.store import AuditRecord
from broker.store.audit import ELICIT_RECORD

MAX_RESULT_CHARS = 1 << 20
WATCH_INTERVAL = 1.0  # seconds between looks at the tool table for changes made elsewhere
MAX_PENDING = 64  # calls waiting for a client's retry (2026-07-28 input-required flow)
MAX_CLIENT_NAME = 64

_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "libos_mcp_call", default=None)


@dataclass(eq=False)
class _Call:
    """A tool call in flight: the approval requests it raises, then its outcome."""

    tool: str
    pid: int
    events: tuple[trio.MemorySendChannel[Any], trio.MemoryReceiveChannel[Any]] = field(
        default_factory=lambda: trio.open_memory_channel(math.inf))
    asked: dict[str, Form] = field(default_factory=dict)  # put to the client, awaiting it
    raised: set[str] = field(default_factory=set)  # every request routed to this call
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ended: trio.Event = field(default_factory=trio.Event)
    done: bool = False


class ElicitingFrontEnd:
    """An approval front end: a request goes to the call handler of an MCP client only if
    the process that client drives raised it inside that call. Others stay in the queue."""

    def requested(self, request: dict[str, Any], queue: ApprovalQueue) -> None:
        call = _current.get()
        if call is not None and not call.done and request["pid"] == call.pid:
            call.raised.add(request["id"])
            call.events[0].send_nowait(("ask", request))


class LibosMCP:
    """The MCP server for one process of one kernel."""

    def __init__(self, kernel: Kernel, pid: int, nursery: trio.Nursery) -> None:
        self.kernel = kernel
        self.pid = pid
        self.nursery = nursery
        self.pending: dict[str, _Call] = {}
        self.calls: set[_Call] = set()  # calls whose handler is running
        self.session: Any = None  # the client's session, once it asked something
        self.modern = False  # a 2026-07-28 session
        self.announced = self._fingerprint()  # the tool table as the client last heard of it
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

    def _seen(self, ctx: Any) -> None:
        self.session, self.modern = ctx.session, self._modern(ctx)

    async def list_tools(self, ctx: Any, params: Any) -> Any:
        self._seen(ctx)
        import mcp_types as types

        # The process's own `tool.list` syscall: checked and audited like a planner's listing.
        listed = await self.kernel.dispatcher.run(self.kernel.process(self.pid), None,
                                                  "tool.list", {})
        # A description and a schema are text a model (or a tool it wrote) controls, and
        # clients show them to people: inert, descriptions keeping their own line breaks.
        # (Tool names are restricted by the table.)
        return types.ListToolsResult(tools=[
            types.Tool(name=t["name"],
                       description=shown_lines(t["description"]) if t["description"] else None,
                       input_schema=shown_schema(t["schema"] or {"type": "object"}))
            for t in listed])

    async def call_tool(self, ctx: Any, params: Any) -> Any:
        self._seen(ctx)
        state = getattr(params, "request_state", None)
        if state is not None:  # a retry that carries answers (2026-07-28)
            call = self.pending.pop(state, None)
            if call is None:
                return self._outcome(("error", {
                    "code": "NOT_FOUND", "message": "no call is waiting for that answer"}))
            responses = getattr(params, "input_responses", None) or {}
            for key, form in list(call.asked.items()):
                del call.asked[key]
                if key in responses:
                    self._answered(key, form, responses[key], ctx)
                else:
                    self._record(key, form, ctx, "unanswered")
        else:
            call = _Call(params.name, self.pid)
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
        call.ended.set()
        call.events[0].send_nowait(("done", outcome))

    async def _drive(self, ctx: Any, call: _Call) -> Any:
        try:
            return await self._drive_events(ctx, call)
        except trio.Cancelled:
            if call not in self.pending.values():
                self._abandon(call)  # the client gave up on the call: so does the broker
            raise

    def _abandon(self, call: _Call) -> None:
        """The call is gone: stop it, and settle what it asked as cancelled (nobody is left
        to run it, so nobody may approve it)."""
        call.scope.cancel()
        for approval_id in sorted(call.raised):
            self.kernel.queue.cancel(approval_id)

    def close(self, *, keep: bool = False) -> None:
        """The session is over: the requests its calls raised are settled as cancelled;
        unless `keep`, its process is killed (with its descendants) and every request the
        process left pending is cancelled too."""
        if not keep and self.kernel.process(self.pid).alive:
            self.kernel.kill(self.pid, "mcp session ended")
        for call in {*self.pending.values(), *self.calls}:
            self._abandon(call)
        for request in [] if keep else self.kernel.approvals():
            if request["pid"] == self.pid:
                self.kernel.queue.cancel(request["id"])

    async def _drive_events(self, ctx: Any, call: _Call) -> Any:
        import mcp_types as types

        self.calls.add(call)
        while True:
            kind, value = await call.events[1].receive()
            if kind == "done":
                self.calls.discard(call)
                await self.check_tools()  # a call may change the table: say so now
                return self._outcome(value)
            form = approval_form(value, self._scopes(value["id"])) if self._can_elicit(
                ctx) else None
            if form is None:
                continue  # it waits in the approval queue (CLI, web page, deadline)
            if self._modern(ctx) and len(self.pending) >= MAX_PENDING:
                # Calls whose client never came back for the answer, and that ended anyway.
                for token in [t for t, c in self.pending.items() if c.done]:
                    del self.pending[token]
            if self._modern(ctx) and len(self.pending) < MAX_PENDING:
                token = secrets.token_urlsafe(24)
                self.pending[token] = call
                call.asked[value["id"]] = form
                # On the record now: the client may never come back with an answer.
                self._record(value["id"], form, ctx, "asked")
                return types.InputRequiredResult(
                    input_requests={value["id"]: types.ElicitRequest(
                        params=types.ElicitRequestFormParams(
                            message=form.message, requested_schema=form.schema))},
                    request_state=token)
            waited = self._bounded(call, value)
            try:
                with waited:
                    answer = await ctx.session.elicit_form(form.message, form.schema,
                                                           related_request_id=ctx.request_id)
            except Exception as exc:
                # The client could not ask (or its reply could not be read: `mcp_unreadable`):
                # on the record; the request stays in the queue.
                self._record(value["id"], form, ctx, "failed",
                             error=shown(f"{type(exc).__name__}: {exc}", 300))
                continue
            if waited.cancelled_caught:  # the call ended first, or the request's deadline
                self._record(value["id"], form, ctx, "unanswered")
                continue
            self._answered(value["id"], form, answer, ctx)

    def _bounded(self, call: _Call, request: dict[str, Any]) -> trio.CancelScope:
        """How long a form waits for the client's reply: until the request's deadline, or
        the end of the call (answered elsewhere, expired, cancelled). A reply that never
        comes, or that could not be read on any id, keeps the call waiting no longer."""
        left = max(0.0, request["deadline"] - self.kernel.clock.now())
        scope = trio.CancelScope(deadline=trio.current_time() + left)

        async def until_ended() -> None:
            await call.ended.wait()
            scope.cancel()

        self.nursery.start_soon(until_ended)
        return scope

    def _answered(self, approval_id: str, form: Form, answer: Any, ctx: Any) -> None:
        """Record what the client's user did, then answer through the kernel's approval API
        (audited there). Only what the form offered can approve; anything else denies."""
        action = getattr(answer, "action", None)
        content = getattr(answer, "content", None) or {}
        choice = content.get("answer") if action == "accept" else None
        self._record(approval_id, form, ctx, str(action) if action in (
            "accept", "decline", "cancel") else "malformed")
        request = next((r for r in self.kernel.approvals() if r["id"] == approval_id), None)
        if request is None:
            return  # answered meanwhile elsewhere, cancelled, or expired
        who = self._who(ctx)
        verdict = form.offered.get(choice) if isinstance(choice, str) else None
        shown = form.digest  # (granted only over the request as the form showed it)
        try:
            if form.free_text and isinstance(choice, str):
                self.kernel.answer(approval_id, choice, who=who, shown=shown)
            elif isinstance(verdict, tuple) and verdict[0] == "scope":  # a chosen scope
                self.kernel.approve(approval_id, always=True, scope=verdict[1], who=who,
                                    shown=shown)
            elif isinstance(verdict, tuple):
                self.kernel.answer(approval_id, verdict[1], who=who, shown=shown)
            elif verdict in ("once", "always"):
                self.kernel.approve(approval_id, always=verdict == "always", who=who,
                                    shown=shown)
            else:  # declined, dismissed, "deny", or an answer the form did not offer
                self.kernel.deny(approval_id, who=who)
        except LibosError:
            pass  # an answer it refuses (audited there)

    def _record(self, approval_id: str, form: Form, ctx: Any, outcome: str,
                **extra: Any) -> None:
        """An elicitation's outcome, in the audit: who was asked, whether the form showed the
        request whole, what it offered, and what came of it."""
        try:  # that one request (the store holds every request ever, arguments and all)
            request = self.kernel.store.get_approval(approval_id)
        except LibosError:
            request = {}
        self.kernel.store.append_audit(AuditRecord(
            phase="admin", syscall=ELICIT_RECORD, pid=request.get("pid"),
            tool=request.get("tool"), resource=request.get("resource"),
            args_hash=request.get("args_hash"),
            detail={"request": approval_id, "client": self._who(ctx), "outcome": outcome,
                    "whole": form.whole, "offered": sorted(form.offered) or ["text"],
                    **extra}))

    def _scopes(self, approval_id: str) -> list[str]:
        """The scopes an `always` answer to this request may take (as on the page)."""
        try:
            return scope_choices(self.kernel.store.get_approval(approval_id))
        except LibosError:
            return []

    def _who(self, ctx: Any) -> str:
        """`mcp:<client name>:pid N`: the front end, the client as it names itself (inert),
        and the process this session drives."""
        params = getattr(ctx.session, "client_params", None)
        info = getattr(params, "client_info", None)
        name = getattr(info, "name", None)
        name = shown(name, MAX_CLIENT_NAME) if isinstance(name, str) and name else "unnamed"
        return f"mcp:{name}:pid {self.pid}"

    # -- helpers -------------------------------------------------------------------------------

    @staticmethod
    def _outcome(outcome: tuple[str, Any]) -> Any:
        import mcp_types as types

        ok, value = outcome
        if ok == "ok":
            text = to_json_text(value, MAX_RESULT_CHARS)
            structured = None
            if isinstance(value, dict):
                # A result cut to the bound is not JSON, nor one holding NaN or an infinity
                # (the text shows them as Python's JSON and `libos --json` do; structured
                # content would carry them as null): then its text alone goes.
                with contextlib.suppress(ValueError):
                    structured = json.loads(text, parse_constant=_not_json)
            return types.CallToolResult(content=[types.TextContent(text=text)],
                                        structured_content=structured)
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

    async def watch_tools(self) -> None:
        """Announce every change of the process's tool table, whoever made it (a call of this
        session, a tool registering one, the embedder's host tools coming or going)."""
        while True:
            await trio.sleep(WATCH_INTERVAL)
            await self.check_tools()

    def _fingerprint(self) -> list[tuple[str, str, str]]:
        return [(t["name"], t["description"] or "", json.dumps(t["schema"], sort_keys=True))
                for t in self.kernel.tools.list_tools(self.pid)]

    async def check_tools(self) -> None:
        now = self._fingerprint()
        if now != self.announced:
            self.announced = now
            await self._tools_changed()

    async def _tools_changed(self) -> None:
        """Tell the client its tool list changed: a notification on handshake-era sessions,
        an event on `subscriptions/listen` streams on 2026-07-28 ones."""
        import mcp_types as types
        from mcp.server.subscriptions import ToolsListChanged

        if self.modern:
            await self.bus.publish(ToolsListChanged())
        elif self.session is not None:
            with contextlib.suppress(Exception):
                await self.session.send_notification(types.ToolListChangedNotification())


async def serve_stdio(db: str | Path, image: str | None, caps: list[str] | None, *,
                      pid: int | None = None, keep: bool = False,
                      attach: Sequence[str] = ()) -> int:
    """Serve a new process of IMAGE (or the existing process `pid`) over stdio until the
    client hangs up. A new process is killed then unless `keep`; an existing one is always
    kept. `attach` are external MCP servers, `NAME=COMMAND`, whose tools the image may list
    (`Kernel.attach_mcp`). What stops it from serving (the store held by another broker, no
    such process, a server that does not start) is also the answer to each of the client's
    requests (`broker.mcp_refusal`)."""
    refused: LibosError | None = None
    with typed_errors():
        async with contextlib.AsyncExitStack() as stack:
            try:
                with typed_errors():
                    sandboxes = await stack.enter_async_context(open_sandboxes(db))
                    kernel = await stack.enter_async_context(Kernel.open(
                        db, sandboxes=sandboxes, approvers=[ElicitingFrontEnd()]))
                    for name, command in map(_attachment, attach):
                        await stack.enter_async_context(kernel.attach_mcp(name, command=command))
                    served = await _process(kernel, image, caps, pid)
            except LibosError as exc:
                refused = exc
            else:
                await serve_process(kernel, served, keep=keep or pid is not None)
    if refused is not None:
        await refuse_stdio(refused)
        raise refused
    return 0


def _attachment(text: str) -> tuple[str, list[str]]:
    name, sep, command = text.partition("=")
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise InvalidArgument(f"--attach {text[:200]!r}: {exc}") from None
    if not sep or not argv:
        raise InvalidArgument(f"--attach {text[:200]!r}: give NAME=COMMAND")
    return name, argv


async def _process(kernel: Kernel, image: str | None, caps: list[str] | None,
                   pid: int | None) -> int:
    if pid is not None:
        if caps is not None:
            raise InvalidArgument("--caps grants to a new process (--image), not to --pid")
        kernel.require_live(kernel.process(pid))
        return pid
    if image is None:
        raise InvalidArgument("libos mcp serves a new process of --image, or --pid N")
    spec = await load_image(kernel, image)
    granted = parse_caps(caps)
    return kernel.spawn(spec.name, caps=list(spec.needs) if granted is None else granted)


async def serve_process(kernel: Kernel, pid: int, *, keep: bool = False) -> None:
    """Serve process `pid` of an open kernel over stdio until the client hangs up (the
    process is then killed, unless `keep`: another session may serve it later, its run-time
    tools still there). This is how an embedder offers its own host tools to an MCP
    client: its kernel, opened with them (and `approvers=[ElicitingFrontEnd()]` for requests
    to reach the client's user), serves a process whose image lists them."""
    try:
        from mcp.server.lowlevel import NotificationOptions
        from mcp.server.stdio import stdio_server
    except ImportError:
        raise InvalidArgument("libos mcp needs the mcp extra: pip install 'libos[mcp]'"
                              ) from None
    try:
        async with trio.open_nursery() as nursery:
            mcp = LibosMCP(kernel, pid, nursery)
            server = mcp.server()
            nursery.start_soon(mcp.watch_tools)
            try:
                async with stdio_server() as (read, sdk_write):
                    # `listChanged` is true: every change of the table is announced.
                    # A line the SDK cannot read is answered, not dropped (`mcp_unreadable`);
                    # a reply it cannot write is answered typed (`mcp_writable`).
                    write = Writable(sdk_write)
                    await server.run(Answering(read, write), write,
                                     server.create_initialization_options(
                                         NotificationOptions(tools_changed=True)))
            finally:
                mcp.close(keep=keep)  # before its calls unwind: nothing it asked stays pending
                nursery.cancel_scope.cancel()
    finally:
        if not keep and kernel.process(pid).alive:
            kernel.kill(pid, "mcp session ended")


def _not_json(constant: str) -> Any:
    """`NaN`, `Infinity`, `-Infinity`: Python's JSON writes them, JSON has none."""
    raise ValueError(f"{constant} is not JSON")
