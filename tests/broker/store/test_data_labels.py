"""The labels the chain's write records show data at rest was written with
(`broker.store.data_labels`): per stretch, a file's replace, a directory's listing."""

from __future__ import annotations

import json
from typing import Any

from broker.store.audit import ANCHOR_RECORD, WHOLE, AuditRecord, StoredRecord
from broker.store.data_labels import FILE, OBJECT, DataLabels

F = (FILE, "/work/a.txt")
EVERY = lambda seq: True  # noqa: E731


def _stored(seq: int, phase: str, syscall: str, resource: str | None,
            detail: dict[str, Any]) -> StoredRecord:
    return StoredRecord(seq, 0.0, AuditRecord(phase, syscall, pid=1, resource=resource),
                        json.dumps(detail), "", "")


def _write(seq: int, labels: list[str] | None, **args: Any) -> StoredRecord:
    detail: dict[str, Any] = {"args": {"path": F[1], "data": "x", **args}}
    if labels:
        detail["labels"] = labels
    return _stored(seq, "intent", "fs.write", F[1], detail)


def _ok(seq: int, intent: int, ok: bool = True) -> StoredRecord:
    return _stored(seq, "outcome", "fs.write", F[1], {"ok": ok, "intent": intent})


def _walk(*records: StoredRecord) -> DataLabels:
    labels = DataLabels()
    for stored in records:
        labels.see(stored)
    return labels


def test_a_label_counts_if_any_record_carrying_it_counts_in_some_stretch() -> None:
    anchor = _stored(3, "admin", ANCHOR_RECORD, None, {})
    walked = _walk(_write(1, ["secret"]), _write(2, ["secret"]), anchor, _write(4, ["secret"]))
    assert walked.labels(F, EVERY) == {"secret"}
    assert walked.labels(F, lambda seq: seq == 4) == {"secret"}  # (the stretch after the note)
    assert walked.labels(F, lambda seq: seq > 4) == frozenset()
    assert walked.labels((FILE, "/work"), EVERY) == {"secret"}  # its directory's listing
    assert walked.labels((FILE, "/work/b.txt"), EVERY) == frozenset()


def test_a_replace_that_succeeded_and_counts_narrows_a_file_else_nothing_does() -> None:
    secret = _write(1, ["secret"])
    replaced = _walk(secret, _write(2, None), _ok(3, 2))
    assert replaced.labels(F, EVERY) == frozenset()
    assert replaced.labels(F, lambda seq: seq != 3) == {"secret"}  # a forged replace
    assert replaced.labels((FILE, "/work"), EVERY) == {"secret"}  # a listing never narrows
    assert _walk(secret, _write(2, None), _ok(3, 2, ok=False)).labels(F, EVERY) == {"secret"}
    assert _walk(secret, _write(2, None, append=True), _ok(3, 2)).labels(F, EVERY) == {"secret"}
    again = _walk(secret, _write(2, ["pii"]), _ok(3, 2), _write(4, ["secret"]))
    assert again.labels(F, EVERY) == {"pii", "secret"}
    whole = _stored(2, WHOLE, "fs.write", F[1], {"args": {"path": F[1]}, "ok": True})
    assert _walk(secret, whole).labels(F, EVERY) == frozenset()


def test_a_directory_made_with_its_parents_labels_each_listing_it_names_a_name_in() -> None:
    def mkdir(parents: bool) -> DataLabels:
        return _walk(_stored(1, "intent", "fs.mkdir", "/a/b/c", {
            "args": {"path": "/a/b/c", "parents": parents}, "labels": ["secret"]}))

    assert {d for d in ("/", "/a", "/a/b") if mkdir(True).labels((FILE, d), EVERY)} == {
        "/", "/a", "/a/b"}
    assert {d for d in ("/", "/a", "/a/b") if mkdir(False).labels((FILE, d), EVERY)} == {"/a/b"}


def test_an_objects_value_naming_labels_only_over_labels_it() -> None:
    put = _stored(1, "intent", "obj.put", "shared/t", {
        "args": {"name": "t", "value": {"labels": ["made-up"]}}, "labels": ["secret"]})
    assert _walk(put).labels((OBJECT, "shared/t"), EVERY) >= {"secret"}
    public = _stored(1, "intent", "obj.put", "shared/t", {
        "args": {"name": "t", "value": {"labels": ["made-up"]}}})
    assert _walk(public).labels((OBJECT, "shared/t"), EVERY) <= {"made-up"}
