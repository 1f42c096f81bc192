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

from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

from broker.errors import Conflict, LibosError, NotCapable
from broker.kernel.faults import STORE_FAULTS, store_faults_typed
from broker.kernel.process import AgentProcess, State
from broker.store import AuditRecord

if TYPE_CHECKING:
    from broker.kernel.ports import HoldsNeeds

OPERATOR = "operator"


def holder(sender: int | None) -> str:
    """The hold a pause places: the operator's, or the sending process's."""
    return OPERATOR if sender is None else f"pid:{sender}"


def _pid_of(hold: str) -> int:
    return int(hold.removeprefix("pid:"))


class Holds:
    def __init__(self, kernel: HoldsNeeds) -> None:
        self.kernel = kernel

    # -- the operator's controls ---------------------------------------------------------------

    def control(self, verb: str, pid: int, who: str, act: Callable[[], None], *,
                via: str | None = None) -> None:
        """An operator's control: checked, audited in the chain, then done. A refused one is
        audited with its error and raised; so is one whose act fails after its record (the
        store failed its write: `rejected` follows `admin`, as for `host_api`'s acts).
        `via`: the channel it came by, when `who` is only what that channel claims
        (`store`: a row anyone who writes the database can write)."""
        detail = {"signal": verb, "who": who, **({"via": via} if via else {})}
        try:
            with store_faults_typed:
                proc = self.kernel.process(pid)
                if proc.exiting is not None:  # its exit waits for a commit: it came first
                    self.kernel.exits.land(proc)
                if verb == "pause":
                    self._require_alive(proc)
                elif verb == "resume":
                    self._require_held(proc)
                self._audit("admin", pid, detail)
                act()
        except LibosError as exc:
            # (A store that cannot write this either: the error is raised, and an `admin`
            # record written before stands alone.)
            with suppress(*STORE_FAULTS):
                self._audit("rejected", pid, {**detail, "error": exc.code,
                                              "message": exc.message})
            raise

    def _audit(self, phase: str, pid: int, detail: dict[str, object]) -> None:
        self.kernel.store.append_audit(AuditRecord(
            phase=phase, syscall="proc.signal", pid=pid if isinstance(pid, int) else None,
            resource=str(pid)[:64], detail=detail))

    # -- placing and lifting -------------------------------------------------------------------

    def place(self, pid: int, hold: str) -> None:
        """Hold `pid` and every live process below it."""
        proc = self.kernel.process(pid)
        self._require_alive(proc)
        for target in [proc, *self._live_below(pid)]:
            self._add(target, {hold})

    def lift(self, pid: int, lifter: str) -> None:
        """Let `pid` go (every hold on it, all of which `lifter` may lift: `check_lift` has
        said so) and lift `lifter`'s own holds from the processes below it."""
        proc = self.kernel.process(pid)
        self._require_held(proc)
        self.check_lift(pid, lifter)
        self._remove(proc, set(proc.holds))
        for below in self._live_below(pid):
            self._remove(below, {lifter})

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
            self._add(child, set(parent.holds))

    def restore(self, proc: AgentProcess) -> None:
        """After a restart: the holds stored for a process (a process paused by a store that
        kept no holds is held by the operator: only the operator lets it go)."""
        holds = self.kernel.store.holds_of(proc.pid)
        if proc.state == State.PAUSED and not holds:
            holds = {OPERATOR}
        proc.holds = set()
        self._add(proc, holds)

    # -- state -----------------------------------------------------------------------------------

    def _add(self, proc: AgentProcess, holds: set[str]) -> None:
        if not holds:
            return
        # The store first: a write that fails leaves the memory as stored. The move is made
        # even when the holds are already in memory: a retry of a pause whose hold was
        # stored but whose move failed must pause it (not return early, leaving it running).
        if not holds <= proc.holds:
            self.kernel.store.set_holds(proc.pid, proc.holds | holds)
            proc.holds |= holds
        if proc.state == State.RUNNABLE:
            self.kernel.move(proc, State.PAUSED, "paused")
        elif proc.state in (State.RUNNING, State.WAITING):
            proc.pause_requested = True  # at its next step boundary

    def _remove(self, proc: AgentProcess, holds: set[str]) -> None:
        if proc.holds & holds:  # the store first (`_add`); a retry still makes the move
            self.kernel.store.set_holds(proc.pid, proc.holds - holds)
            proc.holds -= holds
        if proc.holds:
            return
        proc.pause_requested = False  # a pause asked for before this resume is answered by it
        if proc.state == State.PAUSED:
            self.kernel.move(proc, State.RUNNABLE, "resumed")
            proc.wake_resumed()

    def _live_below(self, pid: int) -> list[AgentProcess]:
        below = (self.kernel.process(p) for p in self.kernel.descendants(pid))
        return [p for p in below if p.alive]

    @staticmethod
    def _require_alive(proc: AgentProcess) -> None:
        if not proc.alive:
            raise Conflict(f"process {proc.pid} is {proc.state.value}; it cannot pause")

    @staticmethod
    def _require_held(proc: AgentProcess) -> None:
        if not proc.holds and proc.state != State.PAUSED:
            raise Conflict(f"process {proc.pid} is {proc.state.value}, not paused")
