"""Red team (session 16): an audit record is never set aside once chained (the records after
it link to it), so a value no store takes must be refused before the chain's head moves.
Text that is not Unicode and a NUL were checked; an integer past 64 bits in `pid` or `inv`
was not: chained and deferred, it waited in front of every later commit, each failing on it
(the whole broker's writes wedged); committed at once, it was the driver's untyped error.
A value a store would keep as another (a bool, a float, a number as text, which SQLite
converts) verified as edited. Now each is `InvalidArgument` before it is chained, on every
way a record is appended; nothing moves, and the next record is appended as usual."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.errors import InvalidArgument
from broker.store import AuditRecord
from broker.store.opening import open_store

BAD_FIELDS: dict[str, dict[str, Any]] = {
    "a pid past 64 bits": {"pid": 1 << 63},
    "a pid below 64 bits": {"pid": -(1 << 63) - 1},
    "an inv past 64 bits": {"inv": 1 << 70},
    "a bool pid": {"pid": True},
    "a float inv": {"inv": 1.5},
    "a pid as text": {"pid": "7"},
    "no phase": {"phase": None},
    "a resource that is no text": {"resource": {"a": 1}},
    "a tool as a number": {"tool": 5},
}

# Every way a record is appended (each returns the seq it gives it).
APPENDS: dict[str, Callable[[Any, AuditRecord], int]] = {
    "deferred": lambda s, r: s.append_audit(r, defer=True),
    "at once": lambda s, r: s.append_audit(r),
    "a pair": lambda s, r: s.append_pair(r, AuditRecord(phase="outcome", syscall="x")),
    "a call's inner record": lambda s, r: s.append_call(
        AuditRecord(phase="intent", syscall="tool.call"), None, [(r, None)]),
    "in a transaction": lambda s, r: _audited(s, r),
}


def _audited(store: Any, record: AuditRecord) -> int:
    with store.audited() as (_db, append):
        return int(append(record))


@pytest.mark.parametrize("append", list(APPENDS))
@pytest.mark.parametrize("bad", list(BAD_FIELDS))
def test_a_record_no_store_holds_as_hashed_is_refused_before_it_is_chained(
        store_at: str | Path, bad: str, append: str) -> None:
    if append == "a call's inner record" and "inv" in BAD_FIELDS[bad]:
        pytest.skip("an inner record's inv is its call's seq, set by the chain")
    store = open_store(store_at)
    try:
        pid = store.insert_process(parent=None, image="i", version="1", state="running",
                                   root="/", cwd="/")
        store.append_audit(AuditRecord(phase="admin", syscall="before"), defer=True)
        head = store.head_seq
        record = AuditRecord(phase="intent", syscall="x", pid=pid)
        for field, value in BAD_FIELDS[bad].items():
            setattr(record, field, value)
        with pytest.raises(InvalidArgument, match="audit record"):
            APPENDS[append](store, record)
        assert store.head_seq == head
        # The next record is appended, and everything that waited commits with it.
        seq = store.append_audit(AuditRecord(phase="intent", syscall="y", pid=pid, inv=1))
        assert seq == head + 1 == store.last_seq()
        assert not store.deferred
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()
    reopened = open_store(store_at)
    try:
        assert reopened.audit_problems(public_key=reopened.signer)[1] == []
    finally:
        reopened.close()


def test_the_widest_integers_a_store_holds_are_kept(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        for value in (-(1 << 63), (1 << 63) - 1, 0):
            store.append_audit(AuditRecord(phase="intent", syscall="x", pid=value, inv=value))
        assert store.audit_problems(public_key=store.signer)[1] == []
        assert [r.record.pid for r in store.audit_records()][-3:] == [
            -(1 << 63), (1 << 63) - 1, 0]
    finally:
        store.close()
