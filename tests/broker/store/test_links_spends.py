"""The spends the links walk counts (`broker.store.links.ChainLinks.spent`) do not depend on
the order of a grant's record and its first spend. A child's grant is recorded in its
`proc.spawn` outcome, written by the call that spawned it after the child is made: where that
call runs on a worker thread (a threaded tool's spawn hops to trio's thread to run, then
back to record), the child may act first, its first spend chained before the record that
grants what it spends. Counted only after the grant, that spend was never counted, and a
writer could give that use back. A real chain, walked as an open walks it.
"""

from __future__ import annotations

from broker.store.audit import GENESIS, AuditRecord, StoredRecord, record_hash
from broker.store.capvouch import CAP_HANDED, CAP_USES
from broker.store.connection import dump_json
from broker.store.links import ChainLinks


def chained(records: list[AuditRecord]) -> list[StoredRecord]:
    out, prev = [], GENESIS
    for seq, record in enumerate(records, 1):
        detail = dump_json(record.detail)
        digest = record_hash(seq, float(seq), record, detail, prev)
        out.append(StoredRecord(seq, float(seq), record, detail, prev, digest))
        prev = digest
    return out


def spend(cap_id: str) -> AuditRecord:
    return AuditRecord(phase="intent", syscall="fs.read", pid=2, cap_id=cap_id,
                       detail={"args": {"path": "/f"}})


def grant(cap_id: str, uses: int) -> AuditRecord:
    return AuditRecord(phase="outcome", syscall="proc.spawn", pid=1,
                       detail={"ok": True, "result": 2, CAP_USES: {cap_id: uses}})


def test_a_spend_chained_before_its_grants_record_is_counted() -> None:
    links = ChainLinks()
    count, problems = links.check(chained([
        spend("cap_child"), grant("cap_child", 3), spend("cap_child"), spend("cap_other")]))
    assert (count, problems) == (4, [])
    assert links.spent("cap_child") == 2
    assert links.spent("cap_never_spent") == 0


def handing(cap_id: str, uses: object) -> AuditRecord:
    """A child's spawn whose outcome says it took `uses` of the parent's `cap_id`."""
    return AuditRecord(phase="outcome", syscall="proc.spawn", pid=1,
                       detail={"ok": True, "result": 3, CAP_HANDED: {cap_id: uses}})


def test_uses_handed_on_are_spent_wherever_they_lie() -> None:
    """A parent's uses handed to a child count as spent, by the same walk, as its intents
    do: one past the anchored head too (its record is written with or after the count it
    lowered, so it never fails an honest row; not counting it let a writer who put back an
    older lock file give the parent it back: red team 8); a count that is no positive int
    counts nothing."""
    links = ChainLinks()
    links.check(chained([grant("cap_parent", 5), spend("cap_parent"), handing("cap_parent", 2),
                         handing("cap_parent", True), handing("cap_parent", -1),
                         spend("cap_parent"), handing("cap_parent", 1)]))
    assert links.spent("cap_parent") == 5
    links.discount([(6, 7)], 6)  # (the last hand-on lies past the anchored head)
    assert links.spent("cap_parent") == 5
