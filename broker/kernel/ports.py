"""What each room of the kernel may use of the others: narrow interfaces, named here.

A room (the dispatcher, the approval queue, holds, the tool table, ...) depends on one of the
`...Needs` protocols below, never on `Kernel`; the kernel is the one object that has all of
them and hands itself in (the rooms it names are read-only properties here: a room reads
another, it never replaces it). This module sits low: it imports only data types from below it
(under `TYPE_CHECKING`), so no room imports the kernel and nothing imports back in a circle.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from broker.caps import CapabilityRegistry, CapSpec, Decision, NeedsApproval
    from broker.kernel.bounds import Bounds
    from broker.kernel.events import EventBus, Row
    from broker.kernel.group_commit import GroupCommit
    from broker.kernel.held_call import HeldCall
    from broker.kernel.image import AgentImage
    from broker.kernel.invocation import Invocation
    from broker.kernel.label_flow import LabelFlow
    from broker.kernel.mail import Mail
    from broker.kernel.process import AgentProcess
    from broker.lifecycle import State
    from broker.planner import Planner
    from broker.providers.clock import Clock
    from broker.providers.fs import FsProvider
    from broker.store import AuditRecord, SQLiteStore
    from broker.syscalls import SyscallDef
    from broker.syscalls.context import Services
    from sandboxes.base import CallLimits, Sandbox, SyscallHost


# -- the process table and lifecycle (kernel.py) ------------------------------------------------

class ProcessTable(Protocol):
    """The live processes and their lifecycle, as the rooms see them."""

    closing: bool  # the broker is closing: waiting requests stay pending

    def process(self, pid: int) -> AgentProcess: ...
    def loaded(self, pid: int) -> AgentProcess | None: ...
    def admit(self, proc: AgentProcess) -> None: ...
    def parent_of(self, pid: int) -> int | None: ...
    def children_of(self, pid: int) -> list[int]: ...
    def if_live(self, pid: int) -> AgentProcess | None: ...
    def descendants(self, pid: int, *, loaded: bool = True) -> list[int]: ...
    def is_descendant(self, ancestor: int, pid: int) -> bool: ...
    def require_live(self, proc: AgentProcess) -> None: ...
    def move(self, proc: AgentProcess, new: State, reason: str | None = None, *,
             defer: bool = False) -> None: ...
    def waiting(self, proc: AgentProcess, reason: str) -> AbstractAsyncContextManager[None]: ...
    def finish(self, proc: AgentProcess, code: int, result: Any) -> None: ...
    def terminate(self, pid: int, reason: str, record: AuditRecord | None = None
                  ) -> None: ...
    def status(self, proc: AgentProcess) -> dict[str, Any]: ...
    async def wait(self, pid: int, timeout: float | None = None) -> dict[str, Any]: ...


# -- what one room offers the others ------------------------------------------------------------

class Dispatch(Protocol):
    """The dispatcher (dispatch.py): the one place where authority is checked."""

    def run_now(self, proc: AgentProcess, inv: Invocation | None, name: str,
                args: Any) -> Any: ...
    async def run(self, proc: AgentProcess, inv: Invocation | None, name: str,
                  args: Any, *, spec: SyscallDef | None = None) -> Any: ...

    @property
    def group(self) -> GroupCommit: ...  # group commit of concurrent processes' records


class Budget(Protocol):
    """Budgets (budgets.py): spending a unit kills the process whose budget it ends."""

    def charge(self, proc: AgentProcess, what: str,
               first: Callable[[], object] | None = None) -> None: ...


class Lineage(Protocol):
    """Live descendants (lineage.py): counted below every ancestor, bounded for spawns."""

    def check(self, spawner: AgentProcess) -> None: ...
    def born(self, proc: AgentProcess) -> None: ...
    def ended(self, proc: AgentProcess) -> None: ...
    def below(self, pid: int) -> int: ...


class Asker(Protocol):
    """The live approval queue (approvals.py), as the dispatcher and the services ask it."""

    async def ask(self, proc: AgentProcess, inv: Invocation | None, name: str, args: Any,
                  needed: NeedsApproval, authorize: Callable[[], Decision]) -> Decision: ...
    async def question(self, proc: AgentProcess, inv: Invocation | None,
                       args: dict[str, Any], resource: str) -> Any: ...
    def end_requests(self, ended: Sequence[tuple[int, dict[str, Any]]]) -> None: ...


class ToolRunner(Protocol):
    """Running a tool's code against a host (tools.py): the kernel's, or a replay's."""

    def image_tools(self, image: AgentImage) -> dict[str, dict[str, Any]]: ...
    async def run_tool(self, name: str, spec: dict[str, Any], args: Any, host: SyscallHost,
                       limits: CallLimits) -> Any: ...


class Tools(ToolRunner, Protocol):
    """The tool table (tools.py)."""

    def list_tools(self, pid: int) -> list[dict[str, Any]]: ...
    async def invoke_tool(self, pid: int, name: str, args: Any, *,
                          caller: Invocation | None, intent: int | HeldCall) -> Any: ...
    async def register_tool(self, pid: int, args: dict[str, Any]) -> dict[str, Any]: ...
    async def prepare_tool(self, args: Mapping[str, Any]) -> dict[str, Any]: ...
    def named_spec(self, name: str) -> dict[str, Any]: ...
    def check_kind(self, kind: str) -> None: ...


class HostToolBook(Protocol):
    """This kernel's host tools (host_tools.py), as the tool table finds them."""

    def __contains__(self, name: object) -> bool: ...
    def definition(self, name: str) -> SyscallDef: ...
    def spec(self, name: str) -> dict[str, Any]: ...
    def check_kind(self, kind: str) -> None: ...


class ImageBook(Protocol):
    """Images and object types (images.py)."""

    @property
    def types(self) -> dict[str, dict[str, Any]]: ...

    def image(self, name: str, version: str | None = None) -> AgentImage: ...
    def define_type(self, name: str, schema: dict[str, Any]) -> None: ...
    def object_schema_check(self, type_name: str, value: Any) -> None: ...


class Holding(Protocol):
    """Holds (holds.py): who holds a process paused, and the operator's audited controls."""

    def inherit(self, parent: AgentProcess, child: AgentProcess) -> None: ...
    def restore(self, proc: AgentProcess) -> None: ...
    def place(self, pid: int, hold: str) -> None: ...
    def lift(self, pid: int, lifter: str) -> None: ...
    def check_lift(self, pid: int, lifter: str) -> None: ...
    def control(self, verb: str, pid: int, who: str, act: Callable[[], None]) -> None: ...


class Spawning(Protocol):
    """Spawning (spawning.py), as `proc.spawn` uses it."""

    def check_spawn(self, parent: int, image: str, caps: list[CapSpec]) -> None: ...
    def spawn_child(self, parent: int, image: str, caps: list[CapSpec], *, root: str | None,
                    args: Any, vouch: dict[str, Any] | None = None) -> int: ...


class Signals(Protocol):
    """The controls (controls.py), as `proc.signal` uses them."""

    def signal(self, sender: int, pid: int, signal: str) -> dict[str, Any]: ...
    def check_resume(self, sender: int, pid: int) -> None: ...


class ControlQueue(Protocol):
    """The controls (controls.py), as recovery applies those asked for while no broker ran."""

    def apply(self) -> None: ...


class PlannerSource(Protocol):
    """Spawning (spawning.py), as recovery rebuilds a restarted process's planner (and an
    exec a fresh one)."""

    def planner_for(self, image: AgentImage, pid: int, *,
                    fresh: bool = False) -> Planner | None: ...


class Forking(Protocol):
    """Spawning (spawning.py), as the controls apply a `libos fork`."""

    def fork(self, pid: int, *, caps: Any = None, planner: Planner | None = None,
             checkpoint: int | None = None, who: str = "host") -> int: ...


class Execing(Protocol):
    """`proc.exec` (process_exec.py), as its syscall uses it."""

    def check(self, pid: int, image: str, version: str | None) -> AgentImage: ...
    def exec(self, pid: int, image: str, version: str | None, *, args: Any = None,
             new_args: bool = False) -> dict[str, Any]: ...


class ImageMaking(Protocol):
    """Images a process makes (image_making.py), as `image.*` and the host use it."""

    def check_register(self, pid: int, spec: Mapping[str, Any],
                       manifests: tuple[tuple[CapSpec, ...], ...] = ()) -> AgentImage: ...
    async def register(self, pid: int, spec: Mapping[str, Any]) -> dict[str, Any]: ...
    def check_commit(self, pid: int, source: int) -> None: ...
    def commit(self, source: int, name: str, *, by: int | None = None,
               manifests: tuple[tuple[CapSpec, ...], ...] = ()) -> AgentImage: ...


class ProcessReads(Protocol):
    """Reads (reads.py), as `proc.self` uses them."""

    def process_info(self, pid: int) -> dict[str, Any]: ...


class Starter(Protocol):
    """The scheduler (scheduler.py), as a spawn starts the new process."""

    def start(self, proc: AgentProcess) -> None: ...


# -- one room each: what a room's needs are made of -------------------------------------------

class HasStore(Protocol):
    @property
    def store(self) -> SQLiteStore: ...


class HasClock(Protocol):
    @property
    def clock(self) -> Clock: ...


class HasCaps(Protocol):
    @property
    def caps(self) -> CapabilityRegistry: ...


class HasEvents(Protocol):
    @property
    def events(self) -> EventBus: ...


class HasBudgets(Protocol):
    @property
    def budgets(self) -> Budget: ...


class HasBounds(Protocol):
    @property
    def bounds(self) -> Bounds: ...


class HasDispatcher(Protocol):
    @property
    def dispatcher(self) -> Dispatch: ...


class HasImages(Protocol):
    @property
    def images(self) -> ImageBook: ...


class HasTools(Protocol):
    @property
    def tools(self) -> Tools: ...


class HasHolds(Protocol):
    @property
    def holds(self) -> Holding: ...


class HasScheduler(Protocol):
    @property
    def scheduler(self) -> Starter: ...


class HasLabels(Protocol):
    @property
    def labels(self) -> LabelFlow: ...


class HasLineage(Protocol):
    @property
    def lineage(self) -> Lineage: ...


class Exiting(Protocol):
    """Ends a process (`broker.kernel.exiting.Exits`; a protocol here, as that module
    needs these ports)."""

    async def finish(self, proc: AgentProcess, code: int, result: Any) -> None: ...


class HasExits(Protocol):
    @property
    def exits(self) -> Exiting: ...


class HasQueue(Protocol):
    @property
    def queue(self) -> Asker: ...


class LeaseHolder(Protocol):
    """The leases this broker holds, one of many (`leasing.Leasing`)."""

    held: dict[int, Any]

    @property
    def active(self) -> bool: ...
    def mine(self, pid: int | None) -> bool: ...
    def lease(self, pid: int) -> Any: ...
    def give_up(self, pid: int, why: str, lease: Any = None) -> None: ...


class HasLeasing(Protocol):
    @property
    def leasing(self) -> LeaseHolder: ...


class HasCallLimits(Protocol):
    @property
    def call_limits(self) -> CallLimits: ...


# -- what each room needs -----------------------------------------------------------------------

class DispatcherNeeds(ProcessTable, HasStore, HasEvents, HasCaps, HasBounds, HasBudgets,
                      HasQueue, HasLabels, Protocol):
    @property
    def services(self) -> Services: ...  # handed to every primitive, in its `SyscallContext`


class QueueNeeds(ProcessTable, HasStore, HasClock, HasEvents, HasCaps, HasLeasing, Protocol):
    pass


class HoldsNeeds(ProcessTable, HasStore, HasExits, Protocol):
    pass


class ImagesNeeds(HasStore, HasTools, Protocol):
    pass


class SchedulerNeeds(ProcessTable, HasStore, HasClock, HasBudgets, HasDispatcher, HasLeasing,
                     HasExits, Protocol):
    pass


class ExitNeeds(ProcessTable, HasStore, HasEvents, HasLineage, HasDispatcher, HasLeasing,
                Protocol):
    pass


class SpawnerNeeds(ProcessTable, HasLineage, HasStore, HasClock, HasCaps, HasEvents, HasImages,
                   HasTools, HasHolds, HasScheduler, HasLabels, Protocol):
    @property
    def planners(self) -> Callable[[AgentImage, int], Planner | None] | None: ...
    def forget(self, pid: int) -> AgentProcess | None: ...  # a spawn that was not stored
    def row_after(self, proc: AgentProcess, new: State, reason: str | None
                  ) -> dict[str, Any]: ...  # a spawn's move, written with its grants
    def spawned(self, proc: AgentProcess, event: tuple[int | None, str, dict[str, Any]],
                moves: Sequence[tuple[State, str | None]]) -> None: ...


class KillNeeds(ProcessTable, HasStore, HasExits, HasQueue, Protocol):
    def row_after(self, proc: AgentProcess, new: State, reason: str | None
                  ) -> dict[str, Any]: ...  # each end, written in the tree's transaction
    def ended_all(self, ends: Sequence[tuple[AgentProcess, str]], new: State,
                  also: Sequence[Row] = ()) -> None: ...


class ControlsNeeds(ProcessTable, HasStore, HasHolds, HasLeasing, Protocol):
    @property
    def spawner(self) -> Forking: ...


class ExecNeeds(ProcessTable, HasStore, HasCaps, HasEvents, HasImages, HasTools, HasScheduler,
                Protocol):
    @property
    def spawner(self) -> PlannerSource: ...


class ImageMakerNeeds(ProcessTable, HasStore, HasImages, HasTools, Protocol):
    pass


class RecoveryNeeds(ProcessTable, HasLineage, HasStore, HasCaps, HasImages, HasTools, HasHolds,
                    HasScheduler, HasLabels, Protocol):
    @property
    def controls(self) -> ControlQueue: ...
    @property
    def spawner(self) -> PlannerSource: ...


class LeasingNeeds(RecoveryNeeds, HasClock, Protocol):
    def forget(self, pid: int) -> AgentProcess | None: ...


class NoticeNeeds(HasStore, Protocol):
    @property
    def queue(self) -> Any: ...  # the approval queue: `sweep()`
    @property
    def controls(self) -> ControlQueue: ...
    @property
    def mail(self) -> Any: ...  # durable mailboxes and events: `told(notices)`


class ReadsNeeds(HasStore, Protocol):
    def process(self, pid: int) -> AgentProcess: ...


class ServicesNeeds(ProcessTable, HasStore, HasClock, HasImages, HasTools, HasQueue,
                    HasLabels, Protocol):
    @property
    def fs(self) -> FsProvider: ...
    @property
    def spawner(self) -> Spawning: ...
    @property
    def controls(self) -> Signals: ...
    @property
    def mail(self) -> Mail: ...
    @property
    def reads(self) -> ProcessReads: ...
    @property
    def execs(self) -> Execing: ...
    @property
    def image_maker(self) -> ImageMaking: ...


class HostToolsNeeds(HasStore, HasCallLimits, Protocol):
    pass


class ToolTableNeeds(ProcessTable, HasStore, HasCaps, HasEvents, HasBounds, HasBudgets,
                     HasDispatcher, HasCallLimits, HasLabels, Protocol):
    @property
    def sandboxes(self) -> dict[str, Sandbox]: ...
    @property
    def host_tools(self) -> HostToolBook: ...
