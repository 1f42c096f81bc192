"""A kill of a process tree (the operator's, `proc.signal`'s, a spent budget's, a wall-time
limit's): `pid` and its live descendants end in one transaction, every end with its pending
requests cancelled and recorded, or none (a kill the store refuses has killed nobody, and the
chain's `rejected` record is true); then the broker's memory follows: their moves, their
in-flight calls cancelled.

The host's kill ends a process held for an unsigned end too (shared mode, `revived.Held`:
never loaded), and the tree below it: the host may always kill, and its kill is its own act,
recorded and signed by this broker; the held row is ended with the host's reason and no result
or exit code, so nothing of the unsigned end (its reason, code or result) is ever taken; its
`state` event (marked `held`) is written with the tree's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.kernel.faults import store_faults_typed
from broker.kernel.process import AgentProcess, State
from broker.kernel.revived import Held
from broker.store import AuditRecord

if TYPE_CHECKING:
    from broker.kernel.events import Row
    from broker.kernel.ports import KillNeeds


def terminate(kernel: KillNeeds, pid: int, reason: str, record: AuditRecord | None = None
              ) -> None:
    """`record`: the act that kills (the host's), written first in the ends' transaction, so
    the chain never says killed while the rows run on (or alone, if none is live)."""
    root = _root(kernel, pid, by_host=record is not None)
    tree = _tree(kernel, pid, reason, root)
    ends = [(proc, why) for proc, why in tree if proc.alive]
    for proc, _ in ends:
        proc.allows(State.KILLED)
    rows = [(proc.pid, kernel.row_after(proc, State.KILLED, why)) for proc, why in ends]
    held: list[Row] = []
    if root is None:  # held: its row ends last (children first), by the host's record alone
        rows.append((pid, held_end(reason)))
        held.append(held_event(kernel.store.get_process(pid)["state"], pid, reason))
    if rows:
        kernel.queue.end_requests(rows, first=record)
    elif record is not None:
        kernel.store.append_audit(record)
    kernel.ended_all(ends, State.KILLED, also=held)  # (their events: one write)
    for proc, _ in tree:
        if proc.scope is not None:
            proc.scope.cancel()


def held_end(reason: str) -> dict[str, Any]:
    """A held process's ended row: the host's reason, no exit code and no result (bound so by
    its `proc.end`: a writer's result in the row is refused at its read, `end_result`)."""
    return {"state": State.KILLED.value, "reason": reason, "exit_code": None, "result": None}


def held_event(old: str, pid: int, reason: str) -> Row:
    """A held process's end said as every kill's is (a `state` event: `old` its row's
    state, never run here), marked `held`."""
    return (pid, "state", {"old": old, "new": State.KILLED.value, "reason": reason,
                           "held": True})


def _root(kernel: KillNeeds, pid: int, *, by_host: bool) -> AgentProcess | None:
    """`pid`, loaded; None if it is held for an unsigned end and the host kills it (any other
    kill of it is refused `Held`, as its load is)."""
    try:
        return kernel.process(pid)
    except Held:
        if not by_host:
            raise
        return None


def _tree(kernel: KillNeeds, pid: int, reason: str, root: AgentProcess | None
          ) -> list[tuple[AgentProcess, str]]:
    """`pid` (unless held: `root` None) and its live descendants (children first), each with
    why it is killed; an exit waiting for a commit lands first (it happened before the kill).
    The walk reads the lineage's rows (`children_of`), so a live process below a child that
    ended (its end left its own child running) is found, after a restart too, and the chain's
    (`ChainLinks.lineage`): the kill's record ends every process the chain made below `pid`,
    so one whose row's parent a database writer rewrote is killed too, not left running
    while the chain says it ended (red team 15). Each is told which ancestor was killed."""
    why: dict[int, str] = {pid: reason}  # (the killed: `pid` and the live below it)
    nearest: dict[int, int] = {pid: pid}  # each one's nearest killed ancestor, or itself
    tree = [] if root is None else [(root, reason)]
    for below, parent in _below(kernel, pid, root):  # parents before children
        killed = nearest[parent]
        proc = kernel.if_live(below)
        if proc is None:  # ended (or not run): it passes the kill on
            nearest[below] = killed
            continue
        nearest[below] = below
        who = "parent" if killed == parent else "ancestor"
        why[below] = f"{who} {killed} was killed ({why[killed]})"
        tree.append((proc, why[below]))
    for proc, _ in tree:
        if proc.exiting is not None:
            kernel.exits.land(proc)
    return tree[::-1]


def _below(kernel: KillNeeds, pid: int, root: AgentProcess | None) -> list[tuple[int, int]]:
    """(process, its parent) for every process below `pid`, parents before children: by the
    rows (`children_of`; a loaded root's own children) and by the chain's lineage."""
    links = kernel.store.chain_links()
    with store_faults_typed:  # (its read commits what waits first: that may fail, typed)
        links.walk()  # (only the records appended since the last walk)
    chain = links.lineage()
    found: list[tuple[int, int]] = []
    seen = {pid}
    pending = [(pid, list(root.children) if root is not None else kernel.children_of(pid))]
    while pending:
        parent, rows = pending.pop(0)
        for child in sorted({*rows, *chain.get(parent, ())}):
            if child in seen:  # (a lineage a writer made loop)
                continue
            seen.add(child)
            found.append((child, parent))
            pending.append((child, kernel.children_of(child)))
    return found
