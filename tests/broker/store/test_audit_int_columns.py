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


class _Clock:
    """A store's clock giving `value` (an embedder's clock: `FakeClock(start=0)` gives ints)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self) -> Any:
        return self.value


@pytest.mark.parametrize("append", list(APPENDS))
def test_a_clock_giving_an_int_chains_records_that_verify(store_at: str | Path,
                                                          append: str) -> None:
    """Red team rtd: a record's `ts` is a column too. A clock giving an int (`FakeClock(0)`,
    or `time.time_ns() // 10**9`) was hashed as an int and kept as a float (a REAL column):
    every record verified as edited. It is chained as the float the store keeps."""
    clock = _Clock(1_700_000_000)
    store = open_store(store_at, clock=clock)
    try:
        APPENDS[append](store, AuditRecord(phase="intent", syscall="x"))
        clock.value = True  # (a bool is an int too)
        store.append_audit(AuditRecord(phase="intent", syscall="y"), defer=True)
        store.commit_deferred()
        assert store.audit_problems(public_key=store.signer)[1] == []
        assert all(type(r.ts) is float for r in store.audit_records())
    finally:
        store.close()


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), "now", None, 1 << 1100],
                         ids=["nan", "inf", "text", "none", "past a float"])
def test_a_clock_giving_no_finite_time_is_refused_before_a_record_is_chained(
        store_at: str | Path, ts: Any) -> None:
    """A time no store keeps as hashed (NaN: SQLite keeps NULL; text; past a float) is
    `InvalidArgument` before the chain moves; with a sane clock again, appends go on."""
    clock = _Clock(1_700_000_000.0)
    store = open_store(store_at, clock=clock)
    try:
        head, clock.value = store.head_seq, ts
        with pytest.raises(InvalidArgument, match="time"):
            store.append_audit(AuditRecord(phase="intent", syscall="x"), defer=True)
        assert store.head_seq == head
        clock.value = 1_700_000_000.5
        store.append_audit(AuditRecord(phase="intent", syscall="y"))
        assert not store.deferred
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()
