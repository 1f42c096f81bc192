"""A loaded process's label, bound by the chain (docs/DESIGN.md, invariants 15 and 19): its
row's label joined with the labels its records show it had (`broker.store.chain_labels`,
collected by the links' one walk). A label never shrinks, so the join is never wrong: a
writer who drops a label from the row (escalation, one UPDATE: red team 11) gets it back,
and the open records that once with an `audit.anchor` record (the row is set to the join,
so the next load finds nothing to note); one who adds a label to the row only narrows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.kernel.refused_images import MAX_TEXT
from broker.store import AuditRecord, SQLiteStore
from broker.store.audit import ANCHOR_RECORD

if TYPE_CHECKING:
    from broker.kernel.process import AgentProcess


def join_label(store: SQLiteStore, proc: AgentProcess, labels: frozenset[str]) -> None:
    """`labels` joined into `proc`'s label, stored if it grew (a label never shrinks)."""
    if not labels <= proc.label:
        proc.label = proc.label | labels
        store.set_process_labels(proc.pid, proc.label)


def bound_label(store: SQLiteStore, pid: int, row_label: frozenset[str]) -> frozenset[str]:
    """Process `pid`'s label at a load: `row_label` (its row's) joined with what the chain
    records of it; a row that lacked some of it is noted and set right."""
    links = store.chain_links()
    links.walk()  # (only the records appended since the last walk)
    recorded = links.labels(pid)
    if recorded <= row_label:
        return row_label
    label = row_label | recorded
    problem = (f"process {pid}'s label in its row lacks {', '.join(sorted(recorded - row_label))}"
               ", which its records show it had")[:MAX_TEXT]
    store.append_audit(AuditRecord(phase="admin", syscall=ANCHOR_RECORD,
                                   detail={"problem": f"{problem}: the chain's label kept"}))
    store.set_process_labels(pid, label)
    return label
