"""Pause holds: who keeps a process paused, and who may let it go.

A pause places a hold on a process and on every process below it (children spawned while it
holds get it too). A process runs only while nobody holds it. Holders are the operator (the
host through `Kernel.pause`, a person through `libos pause`) and processes (`pid:N`, through
`proc.signal`). A hold may be lifted by the process that placed it or by a process above that
one in the lineage; an operator's hold only by the operator. So a parent pauses and resumes
its child at will, but cannot undo a pause the operator placed (`NotCapable`, from
`proc.signal`'s check). The operator's resume lets the named process go whoever held it, and
lifts its own holds from the processes below (their own parents' pauses stay).

Every control the operator gives (pause, resume, kill) is an audit record in the chain:
phase `admin` (or `rejected`, with the error), syscall `proc.signal`, the target's pid, and
who gave it (`host`, or `cli` for the control queue; a name another broker's embedding API
gave through the queue is recorded with `via: store`, a claim and not the host's own act).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING

from broker.errors import Conflict, LibosError, NotCapable
from broker.kernel.faults import STORE_FAULTS, store_faults_typed
from broker.kernel.process import AgentProcess, State
from broker.kernel.revived import Held
from broker.kernel.trio_thread import on_trio_thread
from broker.store import AuditRecord
from broker.store.audit import storable_pid

if TYPE_CHECKING:
    from broker.kernel.ports import HoldsNeeds

OPERATOR = "operator"
_REASON = {State.PAUSED: "paused", State.RUNNABLE: "resumed"}


def holder(sender: int | None) -> str:
    """The hold a pause places: the operator's, or the sending process's."""
    return OPERATOR if sender is None else f"pid:{sender}"


def _pid_of(hold: str) -> int:
    return int(hold.removeprefix("pid:"))


class Holds:
    def __init__(self, kernel: HoldsNeeds) -> None:
        self.kernel = kernel

    # -- the operator's controls ---------------------------------------------------------------

    def control(self, verb: str, pid: int, who: str, act: Callable[[], None] | None, *,
                via: str | None = None,
                recorded_by: Callable[[AuditRecord], None] | None = None) -> None:
        """An operator's control: checked, audited in the chain, then done. A refused one is
        audited with its error and raised; so is one whose act fails after its record (the
        store failed its write: `rejected` follows `admin`, as for `host_api`'s acts).
        `via`: the channel it came by, when `who` is only what that channel claims
        (`store`: a row anyone who writes the database can write). `recorded_by`: the act,
        given its record to write in its own transaction (a kill: with the rows it ends;
        `act` None); its refusal (`since`: the head before it) then takes back nothing of an
        earlier act."""
        detail = {"signal": verb, "who": who, **({"via": via} if via else {})}
        since = None
        try:
            with store_faults_typed:
                proc = self._target(verb, pid)  # (None: held, and killed all the same)
                if proc is not None and proc.exiting is not None:  # its exit waits for a
                    self.kernel.exits.land(proc)  # commit: it came first
                if proc is not None and verb == "pause":
                    self._require_alive(proc)
                elif proc is not None and verb == "resume":
                    self._require_held(proc)
                if act is not None:
                    self._audit("admin", pid, detail)
                    act()
                elif recorded_by is not None:
                    since = self.kernel.store.head_seq
                    recorded_by(self._record("admin", pid, detail))
        except LibosError as exc:
            # (A store that cannot write this either: the error is raised, and an `admin`
            # record written before stands alone.)
            refusal = {**detail, **({"since": since} if since is not None else {})}
            with suppress(*STORE_FAULTS):
                self._audit("rejected", pid, {**refusal, "error": exc.code,
                                              "message": exc.message})
            raise

    def _target(self, verb: str, pid: int) -> AgentProcess | None:
        """The process a control acts on; None for one held for an unsigned end (shared
        mode: never loaded) that the operator kills: a kill is the host's own act, which
        takes nothing of that end (`tree_kill`). Its pause or resume is refused `Held`."""
        try:
            return self.kernel.process(pid)
        except Held:
            if verb != "kill":
                raise
            return None

    def _audit(self, phase: str, pid: int, detail: dict[str, object]) -> None:
        self.kernel.store.append_audit(self._record(phase, pid, detail))

    @staticmethod
    def _record(phase: str, pid: int, detail: dict[str, object]) -> AuditRecord:
        return AuditRecord(phase=phase, syscall="proc.signal", pid=storable_pid(pid),
                           resource=str(pid)[:64], detail=detail)

    # -- placing and lifting -------------------------------------------------------------------

    @on_trio_thread
    def place(self, pid: int, hold: str) -> None:
        """Hold `pid` and every live process below it: all of them or (the store failing)
        none."""
        proc = self.kernel.process(pid)
        self._require_alive(proc)
        self._change([(p, p.holds | {hold}) for p in (proc, *self._live_below(pid))])

    @on_trio_thread
    def lift(self, pid: int, lifter: str) -> None:
        """Let `pid` go (every hold on it, all of which `lifter` may lift: `check_lift` has
        said so) and lift `lifter`'s own holds from the processes below it: all in one
        write."""
        proc = self.kernel.process(pid)
        self._require_held(proc)
        self.check_lift(pid, lifter)
        self._change([(proc, set()), *((p, p.holds - {lifter})
                                        for p in self._live_below(pid))])

    def check_lift(self, pid: int, lifter: str) -> None:
        """`NotCapable` when `pid` is held by someone `lifter` may not overrule."""
        blockers = sorted(h for h in self.kernel.process(pid).holds
                          if not self._may_lift(lifter, h))
        if blockers:
            whose = "the operator" if blockers == [OPERATOR] else ", ".join(blockers)
            raise NotCapable(f"process {pid} is held by {whose}; {lifter} cannot resume it",
                             resource=str(pid))

    def _may_lift(self, lifter: str, hold: str) -> bool:
        if lifter in (OPERATOR, hold):
            return True
        if hold == OPERATOR:
            return False
        return self.kernel.is_descendant(_pid_of(lifter), _pid_of(hold))

    def inherit(self, parent: AgentProcess, child: AgentProcess) -> None:
        """A child spawned while its parent is held is held by the same holders (stored
        while it is being made: its spawn stores it paused)."""
        if parent.holds:
            self._change([(child, child.holds | parent.holds)])

    def restore(self, proc: AgentProcess) -> None:
        """After a restart: the holds stored for a process (a process paused by a store that
        kept no holds is held by the operator: only the operator lets it go)."""
        holds = self.kernel.store.holds_of(proc.pid)
        if proc.state == State.PAUSED and not holds:
            holds = {OPERATOR}
        proc.holds = set()
        if holds:
            self._change([(proc, holds)])

    # -- state -----------------------------------------------------------------------------------

    def _change(self, wanted: Sequence[tuple[AgentProcess, set[str]]]) -> None:
        """Each process's holds made what is given, and each moved as they say (held and
        runnable: paused now; held and running or waiting: at its next step boundary; held
        by nobody and paused: runnable), in one transaction: the store first, so a write
        that fails leaves every process as stored. A move is made even when the holds are
        already in memory: a retry of a pause whose hold was stored but whose move failed
        must pause it."""
        plan: list[tuple[AgentProcess, set[str], State | None]] = []
        for proc, holds in wanted:
            if proc.exiting is not None:  # its exit waits for a commit: it comes first
                self.kernel.exits.land(proc)
            if not proc.alive:
                continue
            move = (State.PAUSED if holds and proc.state == State.RUNNABLE else
                    State.RUNNABLE if not holds and proc.state == State.PAUSED else None)
            if move is not None:
                proc.allows(move)
            if holds != proc.holds or move is not None:
                plan.append((proc, holds, move))
        if plan:
            self.kernel.store.change_holds([
                (proc.pid, holds, None if move is None else self.kernel.row_after(
                    proc, move, _REASON[move])) for proc, holds, move in plan])
        for proc, holds, move in plan:
            proc.holds = set(holds)
            if move is not None:
                self.kernel.moved(proc, move, _REASON[move])
            if move == State.RUNNABLE:
                proc.wake_resumed()
        for proc, _ in wanted:
            if proc.holds and proc.state in (State.RUNNING, State.WAITING):
                proc.pause_requested = True
            elif not proc.holds:  # a pause asked for before this resume is answered by it
                proc.pause_requested = False

    def _live_below(self, pid: int) -> list[AgentProcess]:
        return [p for p in map(self.kernel.if_live, self.kernel.descendants(pid)) if p]

    @staticmethod
    def _require_alive(proc: AgentProcess) -> None:
        if not proc.alive:
            raise Conflict(f"process {proc.pid} is {proc.state.value}; it cannot pause")

    @staticmethod
    def _require_held(proc: AgentProcess) -> None:
        if not proc.holds and proc.state != State.PAUSED:
            raise Conflict(f"process {proc.pid} is {proc.state.value}, not paused")
