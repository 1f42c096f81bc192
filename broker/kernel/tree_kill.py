"""A kill of a process tree (the operator's, `proc.signal`'s, a spent budget's, a wall-time
limit's): `pid` and its live descendants end in one transaction, every end with its pending
requests cancelled and recorded, or none (a kill the store refuses has killed nobody, and the
chain's `rejected` record is true); then the broker's memory follows: their moves, their
in-flight calls cancelled."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.kernel.process import AgentProcess, State
from broker.store import AuditRecord

if TYPE_CHECKING:
    from broker.kernel.ports import KillNeeds


def terminate(kernel: KillNeeds, pid: int, reason: str, record: AuditRecord | None = None
              ) -> None:
    """`record`: the act that kills (the host's), written first in the ends' transaction, so
    the chain never says killed while the rows run on (or alone, if none is live)."""
    tree = _tree(kernel, pid, reason)
    ends = [(proc, why) for proc, why in tree if proc.alive]
    for proc, _ in ends:
        proc.allows(State.KILLED)
    if ends:
        kernel.queue.end_requests([(proc.pid, kernel.row_after(proc, State.KILLED, why))
                                   for proc, why in ends], first=record)
    elif record is not None:
        kernel.store.append_audit(record)
    kernel.ended_all(ends, State.KILLED)  # (their events: one write)
    for proc, _ in tree:
        if proc.scope is not None:
            proc.scope.cancel()


def _tree(kernel: KillNeeds, pid: int, reason: str) -> list[tuple[AgentProcess, str]]:
    """`pid` and its live descendants (children first), each with why it is killed; an exit
    waiting for a commit lands first (it happened before the kill). The walk reads the
    lineage's rows (`descendants`), so a live process below a child that ended (its end left
    its own child running) is found, after a restart too; it is told which ancestor was
    killed."""
    root = kernel.process(pid)
    why: dict[int, str] = {pid: reason}
    tree = [(root, reason)]
    for below in kernel.descendants(pid):  # parents before children
        proc = kernel.if_live(below)
        if proc is None:
            continue
        killed = proc.parent
        while killed not in why:  # the nearest ancestor killed: an ended parent passes it on
            killed = kernel.parent_of(killed)
        who = "parent" if killed == proc.parent else "ancestor"
        why[below] = f"{who} {killed} was killed ({why[killed]})"
        tree.append((proc, why[below]))
    for proc, _ in tree:
        if proc.exiting is not None:
            kernel.exits.land(proc)
    return tree[::-1]
