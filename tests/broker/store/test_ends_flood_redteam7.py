"""Red team 7 on the cost of weighing the ends the chain records (broker/store/ends.py): a
database writer appends a flood of kills of a parent past the signed head. None counts (the
open notes them `caps.unvouched`), but every live child of that parent asked again for its
ancestors' ends, weighing the whole flood each time: at 100,000 forged records and 1,000
children, 10^8 weighings (9 s of CPU at every open, against 0.6 s for the walk itself).
Each process's ends are weighed once, until what counts changes."""

from __future__ import annotations

from broker.store.audit import AuditRecord, StoredRecord
from broker.store.ends import ProcessEnds

FLOOD, CHILDREN = 2_000, 50


def test_a_flood_of_forged_kills_is_weighed_once_not_once_per_child() -> None:
    ends, seqs = ProcessEnds(), iter(range(1, 10**6))

    def see(record: AuditRecord) -> None:
        ends.see(StoredRecord(next(seqs), 0.0, record, "", "", ""))

    see(AuditRecord("admin", "host.spawn", pid=1))
    for child in range(100, 100 + CHILDREN):
        see(AuditRecord("outcome", "proc.spawn", pid=1, detail={"ok": True, "result": child}))
    head = CHILDREN + 1
    for _ in range(FLOOD):  # (past the head: none counts)
        see(AuditRecord("admin", "proc.signal", pid=1, detail={"signal": "kill"}))
    weighed = 0

    def counts(seq: int, kind: str) -> bool:
        nonlocal weighed
        weighed += 1
        return seq <= head

    assert all(ends.ended(child, counts) is None for child in range(100, 100 + CHILDREN))
    assert weighed < FLOOD + 10 * CHILDREN, weighed
    see(AuditRecord("admin", "proc.signal", pid=1, detail={"signal": "kill"}))
    assert ends.ended(100, lambda seq, kind: True) == head + 1  # (weighed again: it counts)
    ends.forget()
    assert ends.ended(100, counts) is None
