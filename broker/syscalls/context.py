"""What a syscall handler is given: the calling process and invocation, and kernel services.

Handlers never import the kernel (layers import downward only). The kernel hands in, as
`services`, an object with exactly the names of the `Services` protocol below (the providers
and the kernel services primitives may call), not the kernel itself: what a primitive may
ask of the kernel is listed here, and nothing else is reachable through its context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from broker.caps import CapabilityTable, CapSpec, CheckedPath, Decision, VirtualPath, normalize
from broker.caps.paths import split_absolute
from broker.caps.subtree import check_subtree

# Takes back what a call did whose record was to make it durable, if that record's commit
# fails: what it took back, or None if it was durable already (`SyscallContext.on_unrecorded`).
Undo = Callable[[], str | None]

if TYPE_CHECKING:
    from broker.providers.clock import Clock
    from broker.providers.fs import FsProvider
    from broker.providers.net import NetProvider
    from broker.providers.shell import ShellProvider
    from broker.store.sqlite import SQLiteStore


class Caller(Protocol):
    """The calling process, as far as a primitive may see it."""

    pid: int
    parent: int | None
    root: str
    cwd: str
    caps: CapabilityTable
    tools: dict[str, dict[str, Any]]  # name -> spec (lang, hash, schema, manifest, ...)
    label: frozenset[str]  # its context label: the join of all its planner has seen


class Invocation(Protocol):
    """The tool invocation a syscall comes from (None when the planner or host calls)."""

    id: int
    tool: str
    # The manifests of this tool and of every tool that called it: each one narrows.
    manifests: tuple[tuple[CapSpec, ...], ...]
    depth: int
    label: frozenset[str]  # the join of its caller's label and what its syscalls returned


class Services(Protocol):
    """Everything a primitive may ask of the kernel (`broker.kernel.services` implements it)."""

    store: SQLiteStore
    fs: FsProvider
    clock: Clock
    shell: ShellProvider
    net: NetProvider

    def set_cwd(self, pid: int, cwd: str) -> None: ...
    def object_schema_check(self, type_name: str, value: Any) -> None: ...
    def process_info(self, pid: int) -> dict[str, Any]: ...
    def check_spawn(self, parent: int, image: str, caps: list[CapSpec]) -> None: ...
    def spawn_child(self, parent: int, image: str, caps: list[CapSpec], *,
                    root: str | None, args: Any, labels: frozenset[str] = ...,
                    vouch: dict[str, Any] | None = ...) -> int: ...
    async def wait_child(self, parent: int, pid: int, timeout: float | None) -> dict[str, Any]: ...
    def is_descendant(self, ancestor: int, pid: int) -> bool: ...
    def signal(self, sender: int, pid: int, signal: str) -> dict[str, Any]: ...
    def check_resume(self, sender: int, pid: int) -> None: ...
    def request_exit(self, pid: int, code: int, result: Any) -> None: ...
    def send_message(self, sender: int | None, pid: int, body: Any,
                     labels: frozenset[str] = ...) -> int: ...
    async def receive_message(self, pid: int, timeout: float | None, taken_by: int,
                              past_aside: bool = ...) -> Any: ...
    def set_aside_message(self, pid: int, intent: int) -> list[int]: ...
    def set_aside_event(self, name: str, intent: int) -> list[int]: ...
    def raise_event(self, name: str, data: Any = None, source: int | None = None,
                    labels: frozenset[str] = ...) -> int: ...
    async def wait_event(self, pid: int, name: str, timeout: float | None,
                         taken_by: int | None = None, past_aside: bool = ...) -> Any: ...
    def list_tools(self, pid: int) -> list[dict[str, Any]]: ...
    async def invoke_tool(self, pid: int, name: str, args: Any, *,
                          caller: Invocation | None, intent: Any,
                          outer: SyscallContext | None = None) -> Any: ...
    async def register_tool(self, pid: int, spec: dict[str, Any], *,
                            labels: frozenset[str] = ...,
                            registrant: tuple[tuple[CapSpec, ...], ...] = ...,
                            call: SyscallContext | None = None) -> dict[str, Any]: ...
    async def ask_human(self, ctx: SyscallContext, args: dict[str, Any],
                        resource: str) -> Any: ...
    def check_exec(self, pid: int, image: str, version: str | None) -> None: ...
    def exec_image(self, pid: int, image: str, version: str | None, *, args: Any,
                   new_args: bool) -> dict[str, Any]: ...
    def check_image_register(self, pid: int, image: dict[str, Any],
                             manifests: tuple[tuple[CapSpec, ...], ...]) -> None: ...
    async def register_image_as(self, pid: int, image: dict[str, Any]) -> dict[str, Any]: ...
    def check_commit(self, pid: int, source: int) -> None: ...
    def commit_image(self, pid: int, source: int, name: str,
                     manifests: tuple[tuple[CapSpec, ...], ...]) -> dict[str, Any]: ...


@dataclass(slots=True)
class SyscallContext:
    process: Caller
    invocation: Invocation | None
    services: Services
    args_hash: str | None = None
    # The audit seq of this call's intent (set once it is durable): a durable id for it.
    intent_seq: int = 0
    # A `tool.call`'s record while it is held, not chained yet (`broker.kernel.read_commit`):
    # the invocation it starts takes its seq from it when it is first asked for.
    held_call: Any = None
    # What a handler adds to its outcome's record (the chain then vouches for it).
    outcome_detail: dict[str, Any] = field(default_factory=dict)
    # Labels the data a handler returns carries from where it was kept (a file's, an
    # object's, a message's): joined with its capability's and the kernel's label rules.
    result_labels: frozenset[str] = frozenset()
    # What to take back if this call's outcome is never recorded (the commit carrying it
    # failed, and its caller is told so): each says what it took back, or None if that was
    # durable already (`on_unrecorded`).
    unrecorded: list[Undo] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def manifests(self) -> tuple[tuple[CapSpec, ...], ...]:
        return self.invocation.manifests if self.invocation else ()

    @property
    def label(self) -> frozenset[str]:
        """The label of the data this call carries (its arguments): the invocation's joined
        with the process's (a call begun before its process saw a secret can still get it,
        from a warm sandbox another call left it in), or the process's when its planner calls."""
        if self.invocation is None:
            return self.process.label
        return self.invocation.label | self.process.label

    def on_unrecorded(self, *undo: Undo) -> None:
        """`undo` runs if this call's outcome fails to commit, before its caller hears of it
        (a registration whose rows never became durable is taken out of memory too)."""
        if self.unrecorded is None:
            self.unrecorded = []
        self.unrecorded.extend(undo)

    def check(self, kind: str, right: str, resource: str) -> Decision:
        return self.process.caps.check(
            kind, right, resource, now=self.services.clock.now(), manifests=self.manifests,
            args_hash=self.args_hash, labels=self.label)

    def path(self, raw: object) -> VirtualPath:
        return normalize(raw, root=self.process.root, cwd=self.process.cwd)

    def check_path(self, right: str, raw: object, *, refuse_links: bool = True) -> Decision:
        path = self.path(raw)
        root = split_absolute(self.process.root)  # (cached per root)
        fs = self.services.fs
        return self.process.caps.check_path(
            right, path, root=root, locate=fs.locate, identify=fs.identify,
            now=self.services.clock.now(), manifests=self.manifests, args_hash=self.args_hash,
            refuse_links=refuse_links, labels=self.label)

    def check_subtree(self, proof: CheckedPath) -> None:
        """What a check of a directory's path leaves out for an act on all beneath it
        (`broker.caps.subtree`): `NotCapable` unless all of it may be acted on."""
        check_subtree(self.process.caps, proof, now=self.services.clock.now(),
                      manifests=self.manifests, args_hash=self.args_hash, labels=self.label)

    def view(self, global_path: str) -> str:
        """A global virtual path as the process names it (relative to its root)."""
        root = self.process.root.rstrip("/")
        return global_path[len(root):] or "/" if root else global_path
