"""Capabilities changed together with the record that says so: the host's grants (a spawn, a
fork) and revocations are durable in one transaction with their audit record, or not at all,
so the chain never misses a grant that took effect, nor names one that did not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.caps.capability import Capability
from broker.store.audit import AuditRecord
from broker.store.capvouch import handed_record, note_removed, vouch_for
from broker.store.chain import AuditChain
from broker.store.processes import ProcessTables


class GrantRecords(AuditChain, ProcessTables):
    def change_capabilities(self, record: AuditRecord, *,
                            granted: Sequence[tuple[str, Capability]] = (),
                            updated: Sequence[Capability] = (),
                            deleted: Sequence[str] = (),
                            process: tuple[int, dict[str, Any]] | None = None) -> int:
        """Insert `granted`, store the new use counts of `updated` (capabilities uses were
        carved from), delete `deleted` and change `process`'s (pid, fields) row (a spawned
        process made runnable), appending `record` in the same transaction. Returns the
        record's seq. `record` carries the digest of each row granted, and the ids of those
        deleted, and the uses handed from each of `updated` (`broker.store.capvouch`)."""
        now = self._now()
        vouch_for(record.detail, granted, updated)  # the chain vouches for each row it grants
        note_removed(record.detail, deleted)  # and for each it takes away
        with self.audited() as (db, append):
            self._insert_capabilities(db, list(granted), updated, now)
            db.executemany("DELETE FROM capabilities WHERE id=?", [(i,) for i in deleted])
            if process is not None:
                self._update_process(db, process[0], dict(process[1]))
            return append(record)

    def hand_on(self, parent: int, entries: list[tuple[str, Capability]],
                carved: Sequence[Capability], process: tuple[int, dict[str, Any]]) -> None:
        """A child's grants (`insert_capabilities`: its `proc.spawn` outcome vouches for
        them), with the record of the uses handed on from `parent`'s counted rows in the
        same transaction as their lowered counts (`capvouch.handed_record`): a crash before
        the outcome leaves no lowered count the chain does not account for."""
        record = handed_record(parent, process[0], entries, carved)
        if record is None:
            self.insert_capabilities(entries, carved, process=process)
            return
        now = self._now()
        with self.audited() as (db, append):
            self._insert_capabilities(db, entries, carved, now)
            self._update_process(db, process[0], dict(process[1]))
            append(record)
