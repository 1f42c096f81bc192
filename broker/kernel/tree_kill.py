"""A kill of a process tree (the operator's, `proc.signal`'s, a spent budget's, a wall-time
limit's): `pid` and its live descendants end in one transaction, every end with its pending
requests cancelled and recorded, or none (a kill the store refuses has killed nobody, and the
chain's `rejected` record is true); then the broker's memory follows: their moves, their
in-flight calls cancelled."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.kernel.process import AgentProcess, State

if TYPE_CHECKING:
    from broker.kernel.ports import KillNeeds


def terminate(kernel: KillNeeds, pid: int, reason: str) -> None:
    tree = _tree(kernel, pid, reason)
    ends = [(proc, why) for proc, why in tree if proc.alive]
    for proc, _ in ends:
        proc.allows(State.KILLED)
    if ends:
        kernel.queue.end_requests([(proc.pid, kernel.row_after(proc, State.KILLED, why))
                                   for proc, why in ends])
    for proc, why in ends:
        kernel.moved(proc, State.KILLED, why)
    for proc, _ in tree:
        if proc.scope is not None:
            proc.scope.cancel()


def _tree(kernel: KillNeeds, pid: int, reason: str, killed: tuple[int, str] | None = None
          ) -> list[tuple[AgentProcess, str]]:
    """`pid` and its live descendants (children first), each with why it is killed; an exit
    waiting for a commit lands first (it happened before the kill). A child that ended is
    walked through when something below it lives (its own end left its child running, still
    below `pid`), passing on `killed`: the nearest ancestor killed, and why."""
    proc = kernel.process(pid)
    if proc.exiting is not None:
        kernel.exits.land(proc)
    if proc.alive or killed is None:
        killed = (pid, reason)
    who = "parent" if killed[0] == pid else "ancestor"
    tree = [entry for child in list(proc.children)
            if kernel.if_live(child) is not None or kernel.lineage.below(child)
            for entry in _tree(kernel, child, f"{who} {killed[0]} was killed ({killed[1]})",
                               killed)]
    return [*tree, (proc, reason)]
