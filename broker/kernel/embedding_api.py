"""The embedding API: each verb a host calls on a `Kernel`, answered by its room. A mixin of
`Kernel`, so the kernel proper keeps only the process table and the lifecycle."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any

from broker.caps import Capability, CapSpec
from broker.errors import NotFound
from broker.json_text import utf8
from broker.kernel import host_acts, replay, too_deep
from broker.kernel.faults import store_faults_typed, typed_store_faults
from broker.kernel.image import AgentImage
from broker.kernel.leasing import HeldElsewhere
from broker.kernel.remote import Remote
from broker.kernel.spawning import PlannerFactory
from broker.kernel.summary import without_surrogates
from broker.planner import Planner
from broker.store.audit import storable_pid
from broker.store.vouch import Tampered
from broker.syscalls.tool import call_in_shape

if TYPE_CHECKING:
    from broker.kernel.approvals import ApprovalQueue, FrontEnd
    from broker.kernel.controls import Controls
    from broker.kernel.dispatch import Dispatcher
    from broker.kernel.host_tools import HostTools
    from broker.kernel.image_making import ImageMaker
    from broker.kernel.images import Images
    from broker.kernel.leasing import Leasing
    from broker.kernel.process import AgentProcess
    from broker.kernel.reads import Reads
    from broker.kernel.scheduler import Scheduler
    from broker.kernel.services import PrimitiveServices
    from broker.kernel.spawning import Spawner
    from broker.kernel.tools import ToolTable
    from broker.store import SQLiteStore


class EmbeddingApi:
    """What a host calls. Each verb is one line into the room that owns it."""

    store: SQLiteStore
    images: Images
    spawner: Spawner
    image_maker: ImageMaker
    reads: Reads
    scheduler: Scheduler
    controls: Controls
    tools: ToolTable
    host_tools: HostTools
    dispatcher: Dispatcher
    services: PrimitiveServices
    queue: ApprovalQueue
    leasing: Leasing

    if TYPE_CHECKING:  # the kernel proper's
        def process(self, pid: int) -> AgentProcess: ...
        def finish(self, proc: AgentProcess, code: int, result: Any) -> None: ...

    @typed_store_faults
    async def register_image(self, image: AgentImage | Mapping[str, Any]) -> AgentImage:
        return await host_acts.register_image(self.images, self.store, image)  # audited

    def image(self, name: str, version: str | None = None) -> AgentImage:
        return self.images.image(name, version)

    @typed_store_faults
    def define_type(self, name: str, schema: dict[str, Any]) -> None:
        """Define an Object Memory type: a name and the JSON Schema its payloads must meet."""
        self.images.define_type(name, schema)

    @typed_store_faults
    def spawn(
        self,
        image: str | AgentImage,
        *,
        caps: Iterable[CapSpec | Mapping[str, Any] | str] = (),
        planner: Planner | None = None,
        root: str = "/",
        args: Any = None,
        children: PlannerFactory | None = None,
    ) -> int:
        """Start a top-level process. The host is the root of authority: it grants `caps`
        directly, never more than the image declares (a deny rule needs no declared need);
        recorded in the chain with every grant. `children` plans for its descendants."""
        if args is not None:  # (a set, a tuple key, a lone surrogate: refused, recorded)
            name = image.name if isinstance(image, AgentImage) else image
            with host_acts.refused(self.store, "host.spawn", resource=name, image=name):
                too_deep.refuse_unplain(args, "the spawn's args")
        return self.spawner.spawn(image, caps=caps, planner=planner, root=root, args=args,
                                  children=children)

    @typed_store_faults
    def fork(self, pid: int, *, caps: Iterable[CapSpec | Mapping[str, Any] | str] | None = None,
             planner: Planner | None = None, checkpoint: int | None = None) -> int:
        """A new process from `pid`'s latest checkpoint or a kept one (see `Spawner.fork`)."""
        return self.spawner.fork(pid, caps=caps, planner=planner, checkpoint=checkpoint)

    @typed_store_faults
    def commit_image(self, pid: int, name: str) -> AgentImage:
        """An image from `pid`'s latest checkpoint: its tools and planner, never its caps."""
        return host_acts.commit_image(self.image_maker, self.store, pid, name)  # audited

    def checkpoints(self, pid: int) -> list[dict[str, Any]]:
        """The checkpoints kept of `pid` to fork from (`ProcessLimits.checkpoints`)."""
        try:
            return self.reads.checkpoints(pid)
        except HeldElsewhere:
            return self.reads.checkpoints(pid, stored=True)

    @typed_store_faults
    def revoke(self, cap_id: str) -> list[Capability]:
        """Revoke a capability and everything derived from it."""
        return self.spawner.revoke(cap_id)

    @typed_store_faults
    def attach(self, pid: int, planner: Planner) -> None:
        """Give a live process without a running planner (host-driven, or restored after a
        restart) a planner, and start it."""
        self.scheduler.attach(pid, planner)

    @typed_store_faults
    def kill(self, pid: int, reason: str = "killed", *, who: str = "host") -> None:
        """Kill a process and its live descendants (audited; see `controls.py`). A process
        another broker runs is killed by that broker, within a moment (`remote.py`)."""
        if isinstance(reason, str) and not utf8(reason):  # (a lone surrogate: shown U+FFFD,
            reason = without_surrogates(reason)  # never a kill recorded but not carried out)
        if self.remote.holder(pid) is not None:
            return self.remote.control("kill", pid, who=who, reason=reason)
        self.controls.kill(pid, reason, who=who)

    @typed_store_faults
    def pause(self, pid: int, *, who: str = "host") -> None:
        """Hold a process and everything below it until the operator resumes it (by the
        broker that runs it, if another one does)."""
        if self.remote.holder(pid) is not None:
            return self.remote.control("pause", pid, who=who)
        self.controls.pause(pid, who=who)

    @typed_store_faults
    def resume(self, pid: int, *, who: str = "host") -> None:
        """Let a paused process go, whoever held it (by the broker that runs it)."""
        if self.remote.holder(pid) is not None:
            return self.remote.control("resume", pid, who=who)
        self.controls.resume(pid, who=who)

    def list_tools(self, pid: int) -> list[dict[str, Any]]:
        return self.tools.list_tools(pid)

    def host_tool(self, tool: Any = None, /, *, state: Any = None, **options: Any) -> Any:
        """Register a host tool in this kernel (`HostTools.register`); without one, a decorator
        (which registers typed too). A store that fails its record is a typed `Conflict`."""
        with store_faults_typed:
            made = self.host_tools.register(tool, state=state, **options)
        if tool is None:
            def decorate(fn: Any) -> Any:
                with store_faults_typed:
                    return made(fn)
            return decorate
        return made

    def attach_mcp(self, name: str, **server: Any) -> Any:
        """`async with kernel.attach_mcp("files", command=[...]) as attached:` (or `url=`): the
        tools of an external MCP server as host tools of kind `mcp` while the block runs
        (`mcp_tools.attach`)."""
        from broker.kernel.mcp_tools import attach

        return attach(self.store, self.host_tools, name, **server)

    async def call_tool(self, pid: int, name: str, args: Any = None) -> Any:
        """Call one tool of a process, with the same checks and audit as a planner's call:
        libos as a secure tool executor inside someone else's agent loop."""
        proc = self.process(pid)
        call = {"name": name, "args": {} if args is None else args}
        checked = call_in_shape(name)  # (the map is the kernel's own)
        with store_faults_typed:  # (not the decorator: no coroutine more per call)
            if self.leasing.active:  # one broker of many: only while it holds the lease
                with self.leasing.fenced(pid):
                    result = await self.dispatcher.run(proc, None, "tool.call", call,
                                                       checked=checked, host=True)
            else:  # (no lease anywhere: nothing to fence)
                result = await self.dispatcher.run(proc, None, "tool.call", call,
                                                   checked=checked, host=True)
            if proc.exit_request is not None and proc.scope is None:
                self.finish(proc, *proc.exit_request)
        return result

    async def replay(self, inv: int) -> dict[str, Any]:
        """Run tool invocation `inv` again from its audit: recorded syscall results are fed
        back instead of touching the world. Says whether it ends in the recorded result."""
        return await replay.replay(self.store, self.tools, self, inv)

    @typed_store_faults
    def send_message(self, sender: int | None, pid: int, body: Any) -> int:
        """Store a message in `pid`'s mailbox (from a process, or from the host)."""
        too_deep.refuse_unplain(body, "the message")
        return self.services.send_message(sender, pid, body)

    @typed_store_faults
    def messages_set_aside(self, pid: int) -> list[dict[str, Any]]:
        """The messages in `pid`'s mailbox a tool's receive could not be sent (past its
        sandbox's bound) and set aside, oldest first: {id, from, body, sent, set_aside_by
        (the audit seq of that receive, whose record names the message)}. A tool's receive
        goes on past them; the planner's receive still takes them."""
        return self.store.messages_set_aside(self._stored_pid(pid))

    @typed_store_faults
    def events_set_aside(self, pid: int) -> list[dict[str, Any]]:
        """The events a tool's wait of `pid` could not be sent and set aside, as
        `messages_set_aside`: {id, name, data, source, raised, set_aside_by}."""
        return self.store.events_set_aside(self._stored_pid(pid))

    def _stored_pid(self, pid: Any) -> int:
        """`pid` if the store has that process (ended or not), else `NotFound`: never the
        driver's error for one past 64 bits or of another type (red team 26)."""
        if storable_pid(pid) is None:
            raise NotFound(f"no process {str(pid)[:64]}")
        self.store.get_process(pid)  # NotFound
        return int(pid)

    @typed_store_faults
    def raise_event(self, name: str, data: Any = None, source: int | None = None) -> int:
        """Raise a named event: every process waiting for it (now or later) sees it once."""
        too_deep.refuse_unplain(data, "the event's data")
        return self.services.raise_event(name, data, source)

    def approvals(self, state: str | None = "pending") -> list[dict[str, Any]]:
        """Approval requests and questions (pending ones by default), oldest first."""
        return self.reads.approvals(state)

    @typed_store_faults
    def approve(self, approval_id: str, always: bool = False, *, scope: str | None = None,
                who: str = "api", shown: str | None = None) -> dict[str, Any]:
        """Approve once (a one-shot grant bound to exactly the asked arguments) or always (a
        standing capability for the resource, or for `scope` if it is no wider than the
        asking capability). `shown`: the request's `digest` as a front end showed it (the
        answer is refused, `Conflict`, if the request changed since)."""
        return self.queue.answer(approval_id, "always" if always else "once", scope=scope,
                                 who=who, shown=shown)

    @typed_store_faults
    def deny(self, approval_id: str, always: bool = False, *, scope: str | None = None,
             who: str = "api", shown: str | None = None) -> dict[str, Any]:
        """Deny once, or always (a deny rule for the resource, or `scope`)."""
        return self.queue.answer(approval_id, "deny-always" if always else "deny",
                                 scope=scope, who=who, shown=shown)

    @contextmanager
    def approver(self, front_end: FrontEnd) -> Iterator[None]:
        """Tell `front_end` of each request filed while the block runs, besides the
        approvers given at opening (how an adapter hands requests to its framework)."""
        self.queue.front_ends.append(front_end)
        try:
            yield
        finally:
            self.queue.front_ends.remove(front_end)

    @typed_store_faults
    def answer(self, approval_id: str, value: Any, *, who: str = "api",
               shown: str | None = None) -> dict[str, Any]:
        """Answer a `human.ask` question; the value must fit its schema or choices."""
        return self.queue.answer(approval_id, "answer", value=value, who=who, shown=shown)

    def ps(self) -> list[dict[str, Any]]:
        return self.reads.ps()

    def capabilities(self, pid: int) -> list[dict[str, Any]]:
        if self.remote.holder(pid) is not None:
            return self.remote.capabilities(pid)  # from the store
        return self.reads.capabilities(pid)

    def audit(self, pid: int | None = None) -> list[dict[str, Any]]:
        if pid is not None and storable_pid(pid) is None:  # (not the driver's error)
            raise NotFound(f"no process {str(pid)[:64]}")
        return self.reads.audit(pid)

    def verify_audit(self) -> tuple[int, list[str]]:
        """(records checked, problems): the hash chain, and that it reaches its anchor."""
        return self.reads.verify_audit()

    def process_info(self, pid: int) -> dict[str, Any]:
        try:
            return self.reads.process_info(pid)
        except HeldElsewhere:  # it, or one above it, runs on another broker
            return self.remote.process_info(pid)
        except Tampered:  # ended for an image the chain refuses: as its row has it
            if not self.remote.ended(pid):
                raise
            return self.remote.process_info(pid)

    @cached_property
    def remote(self) -> Remote:
        """Processes other brokers run, acted on through the store."""
        return Remote(self)  # type: ignore[arg-type]
