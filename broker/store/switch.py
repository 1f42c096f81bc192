"""A process's image replaced (`proc.exec`), in one transaction.

Everything that makes a process one image's rather than another's changes together: the image
it names, its capabilities (narrowed ones added, retired ones kept with no uses or deleted),
its tools registered at run time (gone: its tool table becomes the new image's), its planner's
conversation (gone: the planner is rebuilt from the new image) and its checkpoint (the state
after the exec, logged), and a `caps.narrow` record carrying the digest of each row added
(`broker.store.capvouch`: the chain vouches for them even if a crash cuts off the exec's
outcome). A crash leaves all of it before, or all of it after.

A mixin of `SQLiteStore` (see `broker.store.connection`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from broker.caps.capability import Capability
from broker.store.audit import AuditRecord
from broker.store.capvouch import CAP_RETIRED, NARROW, note_removed, vouch_for
from broker.store.chain import AuditChain
from broker.store.durable import DurableState
from broker.store.processes import ProcessTables


class ImageSwitch(AuditChain, ProcessTables, DurableState):
    def switch_image(self, pid: int, image: str, version: str, *,
                     granted: list[tuple[str, Capability]], retired: Sequence[Capability],
                     deleted: list[str], step: int, state: dict[str, Any]) -> int:
        """Replace process `pid`'s image; returns the id of the checkpoint written."""
        now = self._now()
        record = AuditRecord(phase="admin", syscall=NARROW, pid=pid,
                             resource=f"{image}:{version}")
        vouch_for(record.detail, granted)
        note_removed(record.detail, deleted)
        note_removed(record.detail, [c.id for c in retired], CAP_RETIRED)
        with self.audited() as (db, append):
            self._insert_capabilities(db, granted, retired, now)
            if granted or deleted or retired:
                append(record)
            db.executemany("DELETE FROM capabilities WHERE id=?", [(i,) for i in deleted])
            db.execute("DELETE FROM process_tools WHERE pid=?", (pid,))
            db.execute("DELETE FROM planner_turns WHERE pid=?", (pid,))
            self._update_process(db, pid, {"image": image, "version": version})
            return self._write_checkpoint(db, pid, step, json.dumps(
                state, separators=(",", ":"), default=repr))
