"""What each room of the kernel may use of the others: narrow interfaces, named here.

A room (the dispatcher, the approval queue, holds, the tool table, ...) depends on one of the
`...Needs` protocols below, never on `Kernel`; the kernel is the one object that has all of
them and hands itself in. This module sits low: it imports only data types from below it
(under `TYPE_CHECKING`), so no room imports the kernel and nothing imports back in a circle.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from broker.caps import CapabilityRegistry, CapSpec, Decision, NeedsApproval
    from broker.kernel.bounds import Bounds
    from broker.kernel.events import EventBus
    from broker.kernel.image import AgentImage
    from broker.kernel.invocation import Invocation
    from broker.kernel.mail import Mail
    from broker.kernel.process import AgentProcess
    from broker.lifecycle import State
    from broker.planner import Planner
    from broker.providers.clock import Clock
    from broker.providers.fs import FsProvider
    from broker.store import SQLiteStore
    from broker.syscalls.context import Services
    from sandboxes.base import CallLimits, Sandbox, SyscallHost


# -- the process table and lifecycle (kernel.py) ------------------------------------------------

class ProcessTable(Protocol):
    """The live processes and their lifecycle, as the rooms see them."""

    closing: bool  # the broker is closing: waiting requests stay pending

    def process(self, pid: int) -> AgentProcess: ...
    def loaded(self, pid: int) -> AgentProcess | None: ...
    def admit(self, proc: AgentProcess) -> None: ...
    def descendants(self, pid: int) -> list[int]: ...
    def is_descendant(self, ancestor: int, pid: int) -> bool: ...
    def require_live(self, proc: AgentProcess) -> None: ...
    def move(self, proc: AgentProcess, new: State, reason: str | None = None) -> None: ...
    def waiting(self, proc: AgentProcess, reason: str) -> AbstractAsyncContextManager[None]: ...
    def finish(self, proc: AgentProcess, code: int, result: Any) -> None: ...
    def terminate(self, pid: int, reason: str) -> None: ...
    def status(self, proc: AgentProcess) -> dict[str, Any]: ...
    async def wait(self, pid: int, timeout: float | None = None) -> dict[str, Any]: ...


# -- what one room offers the others ------------------------------------------------------------

class Dispatch(Protocol):
    """The dispatcher (dispatch.py): the one place where authority is checked."""

    def run_now(self, proc: AgentProcess, inv: Invocation | None, name: str,
                args: Any) -> Any: ...
    async def run(self, proc: AgentProcess, inv: Invocation | None, name: str,
                  args: Any) -> Any: ...


class Budget(Protocol):
    """Budgets (budgets.py): spending a unit kills the process whose budget it ends."""

    def charge(self, proc: AgentProcess, what: str) -> None: ...


class Asker(Protocol):
    """The live approval queue (approvals.py), as the dispatcher and the services ask it."""

    async def ask(self, proc: AgentProcess, inv: Invocation | None, name: str, args: Any,
                  needed: NeedsApproval, authorize: Callable[[], Decision]) -> Decision: ...
    async def question(self, proc: AgentProcess, inv: Invocation | None,
                       args: dict[str, Any], resource: str) -> Any: ...
    def end_requests(self, pid: int, why: str, process: dict[str, Any]) -> None: ...


class ToolRunner(Protocol):
    """Running a tool's code against a host (tools.py): the kernel's, or a replay's."""

    def image_tools(self, image: AgentImage) -> dict[str, dict[str, Any]]: ...
    async def run_tool(self, name: str, spec: dict[str, Any], args: Any, host: SyscallHost,
                       limits: CallLimits) -> Any: ...


class Tools(ToolRunner, Protocol):
    """The tool table (tools.py)."""

    def list_tools(self, pid: int) -> list[dict[str, Any]]: ...
    async def invoke_tool(self, pid: int, name: str, args: Any, *,
                          caller: Invocation | None, intent: int) -> Any: ...
    async def register_tool(self, pid: int, args: dict[str, Any]) -> dict[str, Any]: ...
    async def prepare_tool(self, args: Mapping[str, Any],
                           within: AgentProcess | None) -> dict[str, Any]: ...


class ImageBook(Protocol):
    """Images and object types (images.py)."""

    def image(self, name: str, version: str | None = None) -> AgentImage: ...
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
                    args: Any) -> int: ...


class Signals(Protocol):
    """The controls (controls.py), as `proc.signal` uses them."""

    def signal(self, sender: int, pid: int, signal: str) -> dict[str, Any]: ...
    def check_resume(self, sender: int, pid: int) -> None: ...


class ControlQueue(Protocol):
    """The controls (controls.py), as recovery applies those asked for while no broker ran."""

    def apply(self) -> None: ...


class PlannerSource(Protocol):
    """Spawning (spawning.py), as recovery rebuilds a restarted process's planner."""

    def planner_for(self, image: AgentImage, pid: int) -> Planner | None: ...


class ProcessReads(Protocol):
    """Reads (reads.py), as `proc.self` uses them."""

    def process_info(self, pid: int) -> dict[str, Any]: ...


class Starter(Protocol):
    """The scheduler (scheduler.py), as a spawn starts the new process."""

    def start(self, proc: AgentProcess) -> None: ...


# -- what each room needs -----------------------------------------------------------------------

class DispatcherNeeds(ProcessTable, Protocol):
    store: SQLiteStore
    events: EventBus
    caps: CapabilityRegistry
    bounds: Bounds
    budgets: Budget
    queue: Asker
    services: Services  # handed to every primitive, in its `SyscallContext`


class QueueNeeds(ProcessTable, Protocol):
    store: SQLiteStore
    clock: Clock
    events: EventBus
    caps: CapabilityRegistry


class HoldsNeeds(ProcessTable, Protocol):
    store: SQLiteStore


class ImagesNeeds(Protocol):
    store: SQLiteStore
    tools: Tools


class SchedulerNeeds(ProcessTable, Protocol):
    store: SQLiteStore
    clock: Clock
    budgets: Budget
    dispatcher: Dispatch


class SpawnerNeeds(ProcessTable, Protocol):
    store: SQLiteStore
    clock: Clock
    caps: CapabilityRegistry
    events: EventBus
    images: ImageBook
    tools: Tools
    holds: Holding
    scheduler: Starter
    planners: Callable[[AgentImage, int], Planner | None] | None


class ControlsNeeds(ProcessTable, Protocol):
    store: SQLiteStore
    holds: Holding


class RecoveryNeeds(ProcessTable, Protocol):
    store: SQLiteStore
    caps: CapabilityRegistry
    images: ImageBook
    tools: Tools
    holds: Holding
    controls: ControlQueue
    spawner: PlannerSource
    scheduler: Starter


class ReadsNeeds(Protocol):
    store: SQLiteStore

    def process(self, pid: int) -> AgentProcess: ...


class ServicesNeeds(ProcessTable, Protocol):
    store: SQLiteStore
    fs: FsProvider
    clock: Clock
    images: ImageBook
    spawner: Spawning
    controls: Signals
    tools: Tools
    mail: Mail
    queue: Asker
    reads: ProcessReads


class ToolTableNeeds(ProcessTable, Protocol):
    store: SQLiteStore
    caps: CapabilityRegistry
    events: EventBus
    bounds: Bounds
    budgets: Budget
    dispatcher: Dispatch
    sandboxes: dict[str, Sandbox]
    call_limits: CallLimits
