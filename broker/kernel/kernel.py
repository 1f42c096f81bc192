"""The Kernel: the process table and the lifecycle (opening and closing the kernel; moving,
ending and waiting for processes). Opened as an async context manager over a store path.

Every other job is a room of its own, built here over this one object, each depending only on
the narrow interface it names in `ports.py`: the dispatcher (`dispatch`), the tool table
(`tools`), spawning, forking and grants (`spawning`), the scheduler (`scheduler`), the services
handed to primitives (`services`), the controls (`controls`, `holds`), images and types
(`images`), images processes make (`image_making`), exec (`process_exec`), reads (`reads`),
approvals, budgets and bounds, recovery and replay. The embedding API (`embedding_api`, a
mixin) answers each verb from its room.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from broker.caps import CapabilityRegistry
from broker.caps.labels import LabelRule
from broker.errors import Conflict
from broker.kernel import notices, reaping, recovery, tree_kill, young_gc
from broker.kernel.anchoring import sign_periodically
from broker.kernel.approvals import DEFAULT_TIMEOUT, ApprovalQueue, FrontEnd
from broker.kernel.audit_detail import summarize
from broker.kernel.bounds import Bounds, ProcessLimits
from broker.kernel.budgets import Budgets
from broker.kernel.cap_loading import load_vouched
from broker.kernel.controls import Controls
from broker.kernel.dispatch import Dispatcher
from broker.kernel.embedding_api import EmbeddingApi
from broker.kernel.end_result import refuse_forged
from broker.kernel.events import EventBus
from broker.kernel.exiting import Exits
from broker.kernel.faults import typed_store_faults
from broker.kernel.holds import Holds
from broker.kernel.host_api import HostAPI
from broker.kernel.host_tools import HostTools
from broker.kernel.image_making import ImageMaker
from broker.kernel.images import Images
from broker.kernel.label_flow import LabelFlow
from broker.kernel.leasing import LEASE_TTL, HeldElsewhere, Leasing
from broker.kernel.lineage import LiveDescendants
from broker.kernel.lineage_walks import LineageWalks
from broker.kernel.mail import Mail
from broker.kernel.moves import Moves
from broker.kernel.process import LIVE, AgentProcess, State
from broker.kernel.process_exec import Exec
from broker.kernel.reads import Reads
from broker.kernel.revived import Held, Revived
from broker.kernel.scheduler import Scheduler
from broker.kernel.services import PrimitiveServices
from broker.kernel.spawning import PlannerFactory, Spawner
from broker.kernel.tools import MAX_TOOL_DEPTH, ToolTable
from broker.kernel.trio_thread import on_trio_thread
from broker.providers.clock import Clock, RealClock
from broker.providers.fs import FsProvider, LocalFs
from broker.providers.shell import ShellProvider
from broker.store import AuditRecord, SQLiteStore
from broker.store.ctrl_c import protect_from_ctrl_c
from broker.store.location import beside
from broker.store.opening import open_store
from broker.store.vouch import Tampered
from sandboxes.base import CallLimits, Sandbox, close_all

if TYPE_CHECKING:
    from broker.providers.net import NetProvider  # (imported at the first fetch: services.py)


class Kernel(Moves, LineageWalks, EmbeddingApi, HostAPI):  # moves.py, lineage_walks.py;
    # the embedding API: embedding_api.py, host_api.py
    def __init__(self, store: SQLiteStore, fs: FsProvider, clock: Clock,
                 sandboxes: Iterable[Sandbox] = (), call_limits: CallLimits | None = None,
                 *, approval_timeout: float = DEFAULT_TIMEOUT,
                 approvers: Iterable[FrontEnd] = (), planners: PlannerFactory | None = None,
                 process_limits: ProcessLimits | None = None,
                 label_rules: Iterable[Any] = (), broker: str | None = None,
                 lease_ttl: float = LEASE_TTL) -> None:
        protect_from_ctrl_c(type(store))  # (any store: see `broker.store.ctrl_c`)
        self.store = store
        self.labels = LabelFlow(store, label_rules)  # information-flow labels
        self.leasing = Leasing(self, broker, lease_ttl)  # one of many brokers, or None
        self.mail = Mail(store, shared=self.leasing.active)
        self.planners = planners
        self.fs = fs
        self.clock = clock
        limits = process_limits or ProcessLimits()
        self.queue = ApprovalQueue(self, timeout=approval_timeout, front_ends=approvers,
                                   max_pending=limits.approvals)
        self.holds = Holds(self)
        self.closing = False  # set when the broker closes: waiting requests stay pending
        self.caps = CapabilityRegistry()
        self.events = EventBus(store)
        self.budgets = Budgets(self)
        self.lineage = LiveDescendants(self, limits.descendants)
        self.dispatcher = Dispatcher(self)
        self.call_limits = call_limits or CallLimits()
        self.bounds = Bounds(limits, tool_depth=MAX_TOOL_DEPTH,
                             deadline=self.call_limits.deadline)
        self.sandboxes: dict[str, Sandbox] = {}
        self.host_tools = HostTools(self)
        self.tools = ToolTable(self)
        self.images = Images(self)
        self.scheduler, self.exits = Scheduler(self), Exits(self)
        self.spawner = Spawner(self)
        self.controls = Controls(self)
        self.reads = Reads(self, self.queue.answers.closed)
        self.execs, self.image_maker = Exec(self), ImageMaker(self)  # the process model
        store.set_checkpoint_retention(limits.checkpoints)
        # What primitives are handed (in each `SyscallContext`): their services, not the kernel.
        self.services = PrimitiveServices(self)
        for sandbox in sandboxes:
            for lang in sandbox.langs:
                self.sandboxes[lang] = sandbox
        self._procs: dict[int, AgentProcess] = {}
        self._sweep_at = reaping.FIRST_SWEEP  # (ended processes leave the table: `reaping`)
        # An older broker's processes (no record carries digests yet), to be listed in the
        # first host spawn or fork (`capvouch.CAP_OLDER`); any other no record made is planted.
        self.older_processes = load_vouched(store, self.caps)

    @property
    def shell(self) -> ShellProvider:
        return self.services.shell

    @shell.setter
    def shell(self, shell: ShellProvider) -> None:
        self.services.shell = shell

    @property
    def net(self) -> NetProvider:
        return self.services.net

    @net.setter
    def net(self, net: NetProvider) -> None:
        self.services.net = net

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: str | Path = "libos.db",
        *,
        fs_root: str | Path | None = None,
        fs: FsProvider | None = None,
        clock: Clock | None = None,
        sandboxes: Iterable[Sandbox] = (),
        call_limits: CallLimits | None = None,
        approval_timeout: float = DEFAULT_TIMEOUT,
        approvers: Iterable[FrontEnd] = (),
        planners: PlannerFactory | None = None,
        shell: ShellProvider | None = None,
        net: NetProvider | None = None,
        durability: str = "normal",
        process_limits: ProcessLimits | None = None,
        host_tools: Iterable[Any] = (),
        host_state: Any = None,
        audit_key: str | Path | None = None,
        label_rules: Iterable[Any] = (),
        broker: str | None = None,
        lease_ttl: float = LEASE_TTL,
    ) -> AsyncIterator[Kernel]:
        """Open a kernel over the store at `path`: an SQLite file, or a PostgreSQL database
        (`postgresql://...`, with the extra `postgres`). Files live under `fs_root` (default:
        a directory beside the store; for a database, see `broker.store.location`). Processes
        still running when the block ends are cancelled; what they acknowledged is already
        durable. A request for approval that nobody answers within `approval_timeout` seconds
        is denied; `approvers` are front ends (e.g. an `AutoPolicy`) told of each new request.
        `process_limits` bounds what one process may have in flight (sandboxed calls, shell
        runs, fetches, pending approval requests) and the log it may store. `host_tools` are
        registered (with `host_state`). Sandboxes the caller entered (`async with`) are the
        caller's to close; those handed in unentered open on first use and close here.
        `audit_key` is the path of the key that signs the audit chain's anchor (see
        `broker.store.keys` for the default), made on first use. `label_rules` label the
        results of calls on what they cover ({kind, scope, labels}: `broker.caps.labels`).
        `broker`: this broker's identity, one of many sharing a PostgreSQL store, each
        running the processes it holds a lease on (of `lease_ttl` seconds; see
        `broker.kernel.leasing`).

        Opening recovers what a crash cut off (see `broker.kernel.recovery`) and starts every
        live process again whose planner can be rebuilt: from `planners(image, pid)` (which
        builds that of each process spawned without one, too), else the image's settings."""
        label_rules = [LabelRule.parse(rule) for rule in label_rules]  # before anything opens
        # The store first: a file that is not one is refused before anything is made beside it.
        # Opened in a worker thread (a new store's schema takes tens of ms): sandboxes entered
        # before the kernel start their processes meanwhile.
        store = await trio.to_thread.run_sync(partial(
            open_store, path, clock=(clock or RealClock()).now, durability=durability,
            audit_key=audit_key, broker=broker))
        try:  # (a kernel loads the store's capabilities: a damaged row raises here too)
            if fs is None:
                fs = LocalFs(fs_root if fs_root is not None else beside(path, "fs"))
            kernel = cls(store, fs, clock or RealClock(), sandboxes, call_limits,
                         approval_timeout=approval_timeout, approvers=approvers,
                         planners=planners, process_limits=process_limits,
                         label_rules=label_rules, broker=broker, lease_ttl=lease_ttl)
        except BaseException:
            store.close()
            raise
        owned = {s for s in kernel.sandboxes.values() if not s.entered}  # opened on first use
        raised: BaseException | None = None  # by the block: it comes out as itself
        young_gc.opened()
        try:
            kernel.host_tools.add_all(host_tools, state=host_state)  # before any process runs
            async with trio.open_nursery() as nursery:
                kernel.scheduler.nursery = nursery
                if shell is not None:
                    kernel.shell = shell
                if net is not None:
                    kernel.net = net
                if kernel.leasing.active:  # it takes work as leases allow, never all of it
                    nursery.start_soon(kernel.leasing.run, name="libos-leases")
                    nursery.start_soon(notices.listen, kernel, name="libos-notices")
                else:
                    recovery.recover(kernel)
                    # Answers given while no broker ran, applied before any process steps
                    # (and after every live process is back in the table, to be started).
                    kernel.queue.recover()
                nursery.start_soon(kernel.queue.watch, name="libos-approvals")
                nursery.start_soon(kernel.controls.watch, name="libos-controls")
                nursery.start_soon(kernel.events.flush_periodically, name="libos-events")
                nursery.start_soon(sign_periodically, store, name="libos-anchor")
                try:
                    yield kernel
                except BaseException as exc:
                    raised = exc
                finally:
                    kernel.closing = True
                    nursery.cancel_scope.cancel()
        finally:
            young_gc.closed()
            try:
                with trio.CancelScope(shield=True):
                    await close_all(owned)
            finally:  # a sandbox that failed to close still leaves the last lines stored,
                try:  # the leases given back and the store let go
                    kernel.events.flush()
                    kernel.leasing.release_all()
                finally:  # a failed last write still lets go of the store
                    store.close()
        if raised is not None:
            raise raised

    # -- the process table ---------------------------------------------------------------------

    def admit(self, proc: AgentProcess) -> None:
        """A new process enters the table (leased to this broker, if one of many)."""
        self.leasing.admitted(proc)
        self._procs[proc.pid] = proc
        if len(self._procs) >= self._sweep_at:
            self._sweep_at = reaping.sweep(self._procs, self.lineage.below, self.left,
                                           proc.pid)

    def left(self, pids: list[int]) -> None:
        """Ended processes left the table (`reaping`): what else the broker kept of them goes."""
        self.caps.release(pids)
        self.spawner.release(pids)

    def forget(self, pid: int) -> AgentProcess | None:
        """A process leaves the table without a write: another broker runs it now."""
        return self._procs.pop(pid, None)

    def loaded(self, pid: int) -> AgentProcess | None:
        """A process in the table, without loading one from the store."""
        return self._procs.get(pid)

    def process(self, pid: int) -> AgentProcess:
        proc = self._procs.get(pid) if isinstance(pid, int) else None
        return proc if proc is not None else self._load(pid)

    @on_trio_thread  # a threaded call's check may name one: the table changes on trio's thread
    def _load(self, pid: int) -> AgentProcess:
        """A process not in the table: taken from the store, or refused (one of many
        brokers); else one that ended, or from an earlier run of the broker, back in it."""
        proc = self._procs.get(pid) if isinstance(pid, int) else None  # (loaded meanwhile)
        if proc is None and self.leasing.active:
            proc = self.leasing.load(pid)
        elif proc is None:
            proc = recovery.reload(self, pid)
        return proc

    @property
    def live(self) -> list[int]:
        return [pid for pid, p in self._procs.items() if p.state in LIVE]

    def if_live(self, pid: int) -> AgentProcess | None:
        """Process `pid` if it is alive. One not in the table has ended (the table holds every
        live process this broker runs), unless another broker may run it (one of many: taken,
        or `HeldElsewhere`, as `process` does)."""
        proc = self._procs.get(pid)
        if proc is None and self.leasing.active:
            try:
                proc = self.process(pid)
            except (Held, Revived):  # not run: held for an unsigned end (shared), or ended
                return None  # again as it loaded: a tree's kill walks on past it (red team 11)
        return proc if proc is not None and proc.alive else None

    @typed_store_faults
    def checkpoint(self, pid: int) -> dict[str, Any]:
        """Checkpoint a process now (it also happens at every step boundary)."""
        proc = self.process(pid)
        state = recovery.save(self.store, proc, len(proc.history))
        return {"pid": pid, "step": len(proc.history), "state": state}

    # -- the lifecycle -------------------------------------------------------------------------

    @on_trio_thread  # (from a worker thread too: see trio_thread)
    def move(self, proc: AgentProcess, new: State, reason: str | None = None, *,
             defer: bool = False) -> None:
        """`defer`: a change whose loss in a crash acknowledges nothing (a live process's
        state, which recovery sets anew) goes with the next write, its event with the next
        batch."""
        if proc.exiting is not None:  # its own exit waits for a commit: it comes first
            self.exits.land(proc)
            if not proc.alive and new not in LIVE:
                return
        # The store first, then the broker's memory: a write that fails (the store fails)
        # leaves the process as it was, and nothing shows a state that is not stored.
        proc.allows(new)
        fields = self.row_after(proc, new, reason)
        if new in LIVE:
            self.store.update_process(proc.pid, defer=defer, **fields)
        else:  # its requests die with it, in the transaction that records its end
            self.queue.end_requests([(proc.pid, fields)])
        self.moved(proc, new, reason, batched=defer)

    @staticmethod
    def row_after(proc: AgentProcess, new: State, reason: str | None) -> dict[str, Any]:
        """The fields of `proc`'s row once it has moved to `new`."""
        return {"state": new.value, "reason": reason, "exit_code": proc.exit_code,
                "result": summarize(proc.result), "usage": proc.usage.to_json()}

    def require_live(self, proc: AgentProcess) -> None:
        if not proc.alive:
            raise Conflict(f"process {proc.pid} has {proc.state.value}")

    def finish(self, proc: AgentProcess, code: int, result: Any) -> None:
        if not proc.alive:
            return
        before = proc.exit_code, proc.result
        proc.exit_code, proc.result = code, result
        try:
            self.move(proc, State.EXITED, f"exit {code}")
        except BaseException:
            if proc.alive:  # its end was not written: nothing of it shows
                proc.exit_code, proc.result = before
            raise

    @on_trio_thread  # a budget a threaded syscall spent, `proc.signal`: see trio_thread
    def terminate(self, pid: int, reason: str, record: AuditRecord | None = None) -> None:
        """Kill `pid` and its live descendants (`tree_kill`); `record`: the act's, written
        with their ends."""
        tree_kill.terminate(self, pid, reason, record)

    async def wait(self, pid: int, timeout: float | None = None) -> dict[str, Any]:
        """Wait for a process to end; returns its final state, exit code and result. A
        process whose end the store never took (`StoreGaveUp`: failing too long) raises that
        typed error; it stays live in the store."""
        try:
            proc = self.process(pid)
        except HeldElsewhere:  # another broker runs it: its end, as the store has it
            return await self.remote.wait(pid, timeout)
        except Tampered:  # ended for an image the chain refuses: its end, as stored
            if not self.remote.ended(pid):
                raise
            return await self.remote.wait(pid, timeout)
        if timeout is None:  # (no cancel scope: a host waiting for 10,000 processes)
            await proc.done.wait()
        else:
            with trio.move_on_after(timeout):
                await proc.done.wait()
        if proc.alive and proc.stalled is not None:
            raise proc.stalled
        refuse_forged(proc.forged)
        return self.status(proc)

    def status(self, proc: AgentProcess) -> dict[str, Any]:
        return {"pid": proc.pid, "state": proc.state.value, "reason": proc.reason,
                "exit_code": proc.exit_code, "result": proc.result}

    @asynccontextmanager
    async def waiting(self, proc: AgentProcess, reason: str) -> AsyncIterator[None]:
        """Mark a process as waiting (for a child, a timer, a person) while the block runs."""
        moved = proc.state == State.RUNNING
        if moved:
            self.move(proc, State.WAITING, reason)
        try:
            yield
        finally:
            if moved and proc.state == State.WAITING:
                self.move(proc, State.RUNNING)

