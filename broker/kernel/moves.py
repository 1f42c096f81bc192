"""The broker's memory of a process follows a state move the store holds already, and says
so in a `state` event. A mixin of `Kernel` (its `move` writes a move; a spawn's or a tree
kill's transaction writes its own, then calls these)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from broker.kernel.process import LIVE, AgentProcess, State

if TYPE_CHECKING:
    from broker.kernel.events import EventBus, Row
    from broker.kernel.lineage import LiveDescendants


class Moves:
    events: EventBus
    lineage: LiveDescendants

    def moved(self, proc: AgentProcess, new: State, reason: str | None = None, *,
              batched: bool = False) -> None:
        """The broker's memory follows a move the store holds already (`move` wrote it, or
        the caller did, in a transaction of its own: a spawn's, with its grants)."""
        old = self._follow(proc, new, reason)
        if batched and proc.alive:
            self.events.emit_batched(proc.pid, "state", old=old.value, new=new.value,
                                     reason=reason)
        else:  # (its event failing after a durable end: the flush writes it once it can)
            self.events.emit_durably(proc.pid, "state", old=old.value, new=new.value,
                                     reason=reason)

    def spawned(self, proc: AgentProcess, event: Row, moves: Sequence[tuple[State, str | None]]
                ) -> None:
        """`moved` for the moves a spawn's transaction wrote (runnable, then paused if held):
        their state events stored after the spawn's own (`event`), all in one write (one
        commit a spawn, not one an event)."""
        rows = [event]
        for new, reason in moves:
            old = self._follow(proc, new, reason)
            rows.append((proc.pid, "state", {"old": old.value, "new": new.value,
                                             "reason": reason}))
        self.events.emit_all_durably(rows)

    def ended_all(self, ends: Sequence[tuple[AgentProcess, str]], new: State,
                  also: Sequence[Row] = ()) -> None:
        """`moved` for the ends a tree kill wrote in one transaction (each with why): their
        state events stored together, in one write after it (not one a process), with
        `also` (a held process's, never loaded: `tree_kill.held_event`) after them."""
        self.events.emit_all_durably([
            *((proc.pid, "state", {"old": self._follow(proc, new, why).value,
                                   "new": new.value, "reason": why}) for proc, why in ends),
            *also])

    def _follow(self, proc: AgentProcess, new: State, reason: str | None) -> State:
        """The broker's memory of `proc` follows its stored move; the state it left."""
        old = proc.move(new, reason)
        if old in LIVE and new not in LIVE:
            self.lineage.ended(proc)
        if not proc.alive and proc.scope is None:
            proc.done.set()  # with a running task, `done` waits until its work is unwound
        return old
