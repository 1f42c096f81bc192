"""Live processes whose stored image the audit chain does not vouch for (edited, planted, or
its record edited: `broker.kernel.images.Images.image` refuses it as `Tampered`), or a row of
which cannot be read back (`broker.store.json_column.Unreadable`, a `Tampered`). Recovery
does not run them: each is ended (killed, the reason naming the image's problem) with an
`audit.anchor` record, rather than the open failing on it: its neighbours run on."""

from __future__ import annotations

from collections.abc import Sequence

from broker.lifecycle import State
from broker.store import AuditRecord, SQLiteStore
from broker.store.audit import ANCHOR_RECORD

# Bounded: process rows, like image rows, are anyone's who writes the database.
MAX_NOTED = 16
MAX_TEXT = 512


def end_refused(store: SQLiteStore, refused: Sequence[tuple[int, str]]) -> None:
    """End each (pid, problem) and record it, the first `MAX_NOTED` one by one, then the
    count of the rest."""
    for pid, problem in refused:  # (no result: one in a live row is a writer's, red team 14)
        store.update_process(pid, state=State.KILLED, reason=f"not run: {problem}"[:MAX_TEXT],
                             result=None)
    noted = [f"process {pid} ended, not run: {problem}"[:MAX_TEXT]
             for pid, problem in refused[:MAX_NOTED]]
    if len(refused) > MAX_NOTED:
        noted.append(f"{len(refused) - MAX_NOTED} more processes ended, their images refused")
    for problem in noted:
        store.append_audit(AuditRecord(phase="admin", syscall=ANCHOR_RECORD,
                                       detail={"problem": problem}))
