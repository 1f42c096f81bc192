"""Red team 17 (invariants 15 and 19): the labels the chain shows a process had are kept at
the first record in each stretch that carries them (`broker.store.chain_labels`). In shared
mode a vouching or ending record lacking its signature counts for nothing; a database
writer (no key) appended one, unsigned, naming the process with the label it was about to
get (a `proc.spawn` naming it its child, a `host.fork` of its pid): it took the first
place, the genuine record after it was not kept, and with the row's label dropped a load
found none (MEDIUM: the forgery must precede the genuine label). Now such a record never
stands for its stretch. What the regex pre-filter skips is checked too (JSON escapes, key
order, a label containing another)."""

from __future__ import annotations

import json
from typing import Any

from broker.store.audit import WHOLE, AuditRecord, StoredRecord
from broker.store.chain_labels import ProcessLabels

P = 7


def _stored(seq: int, record: AuditRecord, text: str | None = None) -> StoredRecord:
    detail = json.dumps(record.detail) if text is None else text
    return StoredRecord(seq, 0.0, AuditRecord(record.phase, record.syscall, record.pid,
                                              record.inv, detail={}), detail, "", "")


def _walk(*records: StoredRecord) -> ProcessLabels:
    labels = ProcessLabels()
    for stored in records:
        labels.see(stored)
    return labels


def _read(seq: int, labels: list[str], text: str | None = None) -> StoredRecord:
    return _stored(seq, AuditRecord("outcome", "fs.read", pid=P,
                                    detail={"ok": True, "labels": labels}), text)


def test_an_unsigned_forgery_ahead_does_not_hide_the_genuine_label() -> None:
    forged: list[Any] = [
        AuditRecord(WHOLE, "proc.spawn", pid=99, detail={
            "ok": True, "result": P, "args_labels": ["secret"]}),
        AuditRecord("admin", "host.fork", pid=P, detail={"labels": ["secret"]}),
        AuditRecord("intent", "proc.spawn", pid=P, detail={"labels": ["secret"]}),
    ]
    for record in forged:
        labels = _walk(_stored(1, record), _read(2, ["secret"]))
        # (shared mode: the unsigned forgery at seq 1 counts for nothing, the read does)
        assert labels.labels(P, lambda seq: seq != 1) == {"secret"}, record.syscall
        assert labels.labels(P, lambda seq: seq == 1) == {"secret"}
    # a neighbour: an ordinary record ahead still stands for its stretch (one kept)
    plain = _walk(_read(1, ["secret"]), _read(2, ["secret"]))
    assert plain.labels(P, lambda seq: seq == 1) == {"secret"}
    assert plain.labels(P, lambda seq: seq == 2) == frozenset()


def test_the_pre_filter_skips_nothing_that_names_a_new_label() -> None:
    texts = [
        '{"ok": true, "labels": ["\\u0073ecret"]}',  # an escape: parsed, named "secret"
        '{"labels"  :  [ "secret" ], "ok": true}',  # key order, whitespace
        '{"ok": true, "labels": ["public", "secret"]}',
    ]
    for text in texts:
        labels = _walk(_read(1, ["public"]), _read(2, [], text))
        assert labels.labels(P, lambda seq: seq == 2) == {"secret"}, text
    # a label containing another ("secret" in "secret2", and the reverse)
    labels = _walk(_read(1, ["secret2"]), _read(2, ["secret"]), _read(3, ["secret2", "secret"]))
    assert labels.labels(P, lambda seq: True) == {"secret", "secret2"}
    assert labels.labels(P, lambda seq: seq == 2) == {"secret"}
