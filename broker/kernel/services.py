"""The services handed to primitives: what a syscall handler may ask of the kernel.

Every `SyscallContext` carries this object as its `services`: it has exactly the names of the
`broker.syscalls.context.Services` protocol (the providers, and the kernel services listed
there), so a primitive cannot reach the rest of the kernel through its context. Each
service is the room that does the work, named here.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, cast

from broker.errors import NotFound
from broker.kernel.leasing import HeldElsewhere
from broker.kernel.trio_thread import on_trio_thread
from broker.providers.shell import ShellProvider, SubprocessShell
from broker.store.vouch import SPEC_HASH, spec_digest

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from broker.caps import CapSpec
    from broker.kernel.held_call import HeldCall
    from broker.kernel.image_making import Manifests
    from broker.kernel.invocation import Invocation
    from broker.kernel.ports import ServicesNeeds
    from broker.providers.net import NetProvider
    from broker.syscalls.context import Invocation as CallerInvocation
    from broker.syscalls.context import SyscallContext


class PrimitiveServices:
    __slots__ = ("_controls", "_exec", "_images", "_mail", "_maker", "_net", "_queue", "_reads",
                 "_spawner", "_table", "_tools", "clock", "fs", "shell", "store")

    def __init__(self, kernel: ServicesNeeds) -> None:
        self.store = kernel.store
        self.fs = kernel.fs
        self.clock = kernel.clock
        self.shell: ShellProvider = SubprocessShell()
        self._net: NetProvider | None = None  # (`net`)
        self._table = kernel
        self._images = kernel.images
        self._spawner = kernel.spawner
        self._controls = kernel.controls
        self._tools = kernel.tools
        self._mail = kernel.mail
        self._queue = kernel.queue
        self._reads = kernel.reads
        self._exec = kernel.execs
        self._maker = kernel.image_maker

    @property
    def net(self) -> NetProvider:
        """The HTTP provider: the host's, else one made at the first fetch (`HttpxNet`'s
        module is not imported by a broker that never fetches, as the demo's)."""
        if self._net is None:
            from broker.providers.net import HttpxNet

            self._net = HttpxNet()
        return self._net

    @net.setter
    def net(self, net: NetProvider) -> None:
        self._net = net

    def list_tools(self, pid: int) -> list[dict[str, Any]]:
        return self._tools.list_tools(pid)

    def invoke_tool(self, pid: int, name: str, args: Any, *,
                    caller: CallerInvocation | None, intent: int | HeldCall,
                    outer: SyscallContext | None = None) -> Coroutine[Any, Any, Any]:
        # A context's invocation is always one the kernel started (`tools.Invocation`). (Its
        # coroutine handed on as it is: one frame less in every tool call.)
        return self._tools.invoke_tool(pid, name, args, caller=cast("Invocation", caller),
                                       intent=intent, outer=outer)

    async def register_tool(self, pid: int, args: dict[str, Any], *,
                            labels: frozenset[str] = frozenset(),
                            registrant: Manifests = (),
                            call: SyscallContext | None = None) -> dict[str, Any]:
        return await self._tools.register_tool(pid, args, labels=labels, registrant=registrant,
                                               call=call)

    def set_cwd(self, pid: int, cwd: str) -> None:
        proc = self._table.process(pid)
        proc.cwd = cwd
        self.store.update_process(pid, cwd=cwd)

    def object_schema_check(self, type_name: str, value: Any) -> None:
        self._images.object_schema_check(type_name, value)

    def check_spawn(self, parent: int, image: str, caps: list[CapSpec]) -> None:
        self._spawner.check_spawn(parent, image, caps)

    # Moves processes: from a threaded WASM call's worker thread, run on trio's thread.
    @on_trio_thread
    def spawn_child(self, parent: int, image: str, caps: list[CapSpec], *, root: str | None,
                    args: Any, labels: frozenset[str] = frozenset(),
                    vouch: dict[str, Any] | None = None) -> int:
        return self._spawner.spawn_child(parent, image, caps, root=root, args=args,
                                         labels=labels, vouch=vouch)

    async def wait_child(self, parent: int, pid: int, timeout: float | None) -> dict[str, Any]:
        if pid not in self._table.process(parent).children:
            raise NotFound(f"process {pid} is not a child of {parent}")
        status = await self._table.wait(pid, timeout)
        label = self._table.process(pid).label
        # Its result (and exit code) is something of what it saw: the wait takes it on.
        return {**status, "labels": sorted(label)} if label else status

    def process_info(self, pid: int) -> dict[str, Any]:
        return self._reads.process_info(pid)

    def is_descendant(self, ancestor: int, pid: int) -> bool:
        return self._table.is_descendant(ancestor, pid)

    @on_trio_thread  # (as `spawn_child`)
    def signal(self, sender: int, pid: int, signal: str) -> dict[str, Any]:
        return self._controls.signal(sender, pid, signal)

    def check_resume(self, sender: int, pid: int) -> None:
        self._controls.check_resume(sender, pid)

    def send_message(self, sender: int | None, pid: int, body: Any,
                     labels: frozenset[str] = frozenset()) -> int:
        """Store a message in `pid`'s mailbox (from a process, or from the host), with the
        labels of the data it carries. A process another broker runs gets it there (the
        store tells that broker: `broker.kernel.notices`)."""
        with contextlib.suppress(HeldElsewhere):  # live, on another broker
            self._table.process(pid)  # NotFound for an unknown pid
        return self._mail.send(sender, pid, body, labels)

    async def receive_message(self, pid: int, timeout: float | None, taken_by: int,
                              past_aside: bool = False) -> Any:
        return await self._mail.receive(pid, timeout, taken_by, past_aside)

    def set_aside_message(self, pid: int, intent: int) -> list[int]:
        """Set aside the message the receive of `intent` took (it could not be sent to the
        tool): kept, and a tool's later receive goes on past it. Returns its id."""
        return self._mail.set_aside(pid, intent)

    def set_aside_event(self, name: str, intent: int) -> list[int]:
        """Set aside the event the wait of `intent` saw (it could not be sent to the tool):
        kept unseen for the planner's wait, and a tool's later wait goes on past it."""
        return self._mail.set_aside_event(name, intent)

    def raise_event(self, name: str, data: Any = None, source: int | None = None,
                    labels: frozenset[str] = frozenset()) -> int:
        """Raise a named event: every process waiting for it (now or later) sees it once."""
        return self._mail.raise_event(name, data, source, labels)

    async def wait_event(self, pid: int, name: str, timeout: float | None,
                         taken_by: int | None = None, past_aside: bool = False) -> Any:
        return await self._mail.wait_event(pid, name, timeout, taken_by, past_aside)

    def request_exit(self, pid: int, code: int, result: Any) -> None:
        self._table.process(pid).exit_request = (code, result)

    async def ask_human(self, ctx: SyscallContext, args: dict[str, Any], resource: str) -> Any:
        """`human.ask`: a typed question to a person, through the approval queue."""
        proc = self._table.process(ctx.pid)
        return await self._queue.question(proc, ctx.invocation, args,  # type: ignore[arg-type]
                                          resource)

    def check_exec(self, pid: int, image: str, version: str | None) -> None:
        self._exec.check(pid, image, version)

    def exec_image(self, pid: int, image: str, version: str | None, *, args: Any,
                   new_args: bool) -> dict[str, Any]:
        return self._exec.exec(pid, image, version, args=args, new_args=new_args)

    def check_image_register(self, pid: int, image: dict[str, Any],
                             manifests: tuple[tuple[CapSpec, ...], ...]) -> None:
        self._maker.check_register(pid, image, manifests)

    async def register_image_as(self, pid: int, image: dict[str, Any]) -> dict[str, Any]:
        return await self._maker.register(pid, image)

    def check_commit(self, pid: int, source: int) -> None:
        self._maker.check_commit(pid, source)

    def commit_image(self, pid: int, source: int, name: str,
                     manifests: tuple[tuple[CapSpec, ...], ...]) -> dict[str, Any]:
        image = self._maker.commit(source, name, by=pid, manifests=manifests)
        return {"name": image.name, "version": image.version, "origin": image.origin,
                "needs": [n.to_wire() for n in image.needs],
                SPEC_HASH: spec_digest(image.to_json())}  # as built: the syscall's record
