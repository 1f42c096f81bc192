"""The label ceiling (docs/DESIGN.md, invariant 19 and §9 "Labels are coarse and beside the
chain"): what data at rest is labelled once the chain its labels are joined with is broken.

A read takes a file's, an object's, a message's or an event's label from its row joined with
what the walked write records show (`broker.store.data_labels`). A writer without the key who
removes the records of a labelled write (or moves them below the seq this broker walked, or
edits them, or has them counted for nothing in a span no anchor vouches for) and drops the
row's label leaves nothing that names the data they labelled: the walk finds the break, but
not whose labels it hid (red team 23). So once the walk shows a break (`ChainLinks.
data_break`), every such read carries the ceiling instead: the union of every label this
store could have given data, i.e. every label a capability row names (attached or bounded),
a label column holds, a walked record names, or a label rule of this kernel gives, and
`chain.broken` (those sources but the rules are a writer's to empty: red team 28). Reads
still work; a flow the labels' bounds forbid (an export) is refused, as for labelled data.
Over-labelling fails closed, so sources a writer controls may add to it, never take away.

It never trips on an intact chain: a crash, a rolled-back transaction, a peer's appends and
reopens leave the chain whole (`libos audit --verify` clean). Once it trips it stays so (the
break stays in the chain). The first over-labelled read of an open records it once
(`CEILING_RECORD`), so the operator learns why exports are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from broker.store.audit import AuditRecord
from broker.store.connection import Connected
from broker.store.label_names import names_in, policy_names

CEILING_RECORD = "labels.ceiling"
# Always in the ceiling: every other source a writer can empty (delete the capability rows,
# clear the columns, delete the records), and an empty ceiling would read as public, passing
# a sink only public data may enter (`{"*": "deny"}`, or an `ask` a lifted label answers).
BROKEN_CHAIN = "chain.broken"
# The label columns (a JSON list each) a ceiling reads, and the capabilities' policies.
_COLUMNS = ("file_labels", "processes", "objects", "mailbox", "raised", "approvals")
# The ceiling's names its record lists (a writer may fill the label columns with many more).
MAX_RECORDED = 64


class LabelCeiling(Connected):
    # The labels this kernel's label rules give (`broker.kernel.label_flow`): not stored.
    rule_labels: frozenset[str] = frozenset()
    _ceiling_noted = False  # (this open recorded that it over-labels)

    def note_rule_labels(self, labels: Iterable[str]) -> None:
        """Labels a label rule of this kernel gives (not stored): in the ceiling."""
        self.rule_labels = self.rule_labels | frozenset(labels)

    def over_labelled(self, labels: frozenset[str], links: Any) -> frozenset[str]:
        """`labels` (a read's row joined with the chain), or the ceiling if the walked chain
        is broken (`links`: walked up to date by the caller)."""
        broken = links.data_break()
        if broken is None:
            return labels
        ceiling = labels | self.label_ceiling(links)
        if not self._ceiling_noted and self._lock_fd is not None:
            self._note_ceiling(broken, ceiling)
        return ceiling

    def label_ceiling(self, links: Any) -> frozenset[str]:
        """Every label this store could have given data (see the module's note)."""
        found = {BROKEN_CHAIN, *self.rule_labels} | links.named_labels()
        for table in _COLUMNS:
            found |= names_in(row[0] for row in self._query(
                f"SELECT DISTINCT labels FROM {table} WHERE labels IS NOT NULL"))
        for row in self._query("SELECT DISTINCT policy FROM capabilities WHERE policy IS NOT"
                               " NULL"):
            found |= policy_names(row[0])
        return frozenset(found)

    def _note_ceiling(self, broken: int, ceiling: frozenset[str]) -> None:
        with self._lock:  # (once per open: two reads at once record it once)
            if self._ceiling_noted:
                return
            self.append_audit(AuditRecord(  # type: ignore[attr-defined]
                phase="admin", syscall=CEILING_RECORD, detail={
                    "break": broken, "ceiling": sorted(ceiling)[:MAX_RECORDED],
                    "count": len(ceiling),
                    "problem": f"the audit chain is broken at record {broken} (`libos audit"
                               " --verify` names it): records that labelled data at rest may"
                               " be gone, so every read of a file, object, message or event"
                               " carries every label this store knows (flows their bounds"
                               " forbid, such as exports, are refused)"}))
            self._ceiling_noted = True
