"""A write deferred for the next commit (`Connected.defer`) that the store refuses for good
(an integer past 64 bits, text that is not Unicode, a NUL PostgreSQL refuses) used to wait in
front of every later write: each commit, of any process, failed on it again, and the store's
close with it (the whole broker's writes wedged). Now it is set aside: its owner is told
(`refusals_of`, a typed `WriteRefused`), the writes deferred beside it (audit records among
them) commit, the chain verifies, and later writes go on. Text no database takes as UTF-8 in
an event or a process's result is kept escaped instead (read back as given)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.errors import InvalidArgument
from broker.store import AuditRecord
from broker.store.location import is_database
from broker.store.opening import open_store
from broker.store.refusals import RefusedBeside, WriteRefused

# Deferred writes no store takes (each made for process `pid`).
POISONS: dict[str, Callable[[Any, int], None]] = {
    "a code past 64 bits": lambda s, pid: s.update_process(pid, defer=True, exit_code=2**70),
    "a lone surrogate": lambda s, pid: s.update_process(pid, defer=True, reason="x\ud800"),
    "a step past 64 bits": lambda s, pid: s.save_checkpoint(pid, 2**70, {"a": 1}, defer=True),
}


def _process(store: Any) -> int:
    return store.insert_process(parent=None, image="i", version="1", state="running",
                                root="/", cwd="/")


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_refused_deferred_write_is_set_aside_and_the_store_goes_on(
        store_at: str | Path, poison: str) -> None:
    store = open_store(store_at)
    try:
        victim, other = _process(store), _process(store)
        store.append_audit(AuditRecord(phase="intent", syscall="x", pid=other), defer=True)
        POISONS[poison](store, victim)
        store.update_process(other, defer=True, reason="fine")
        seq = store.append_audit(AuditRecord(phase="outcome", syscall="x", pid=other),
                                 defer=True)
        committed = store.committed_total
        try:  # (PostgreSQL may find it only once the empty transaction is sent: still typed)
            store.commit_deferred()
        except (RefusedBeside, WriteRefused):
            pytest.fail("an empty commit has nothing of its own to lose")
        assert not store.deferred and store.committed_total == committed + 4
        refusal = store.refusals_of(victim)
        assert isinstance(refusal, WriteRefused) and refusal.code == "INVALID_ARGUMENT"
        assert store.refusals_of(victim) is None and store.refusals_of(other) is None
        # What waited beside it is durable, the chain whole; the next writes work.
        assert store.get_process(other)["reason"] == "fine"
        assert store.head_seq == seq == store.last_seq()
        store.update_process(other, state="exited")
        store.append_audit(AuditRecord(phase="admin", syscall="y", pid=other))
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()
    reopened = open_store(store_at)  # (the head kept in memory was the durable one)
    try:
        assert reopened.audit_problems(public_key=reopened.signer)[1] == []
    finally:
        reopened.close()


def test_a_transaction_that_carried_a_refused_write_runs_its_own_body(
        store_at: str | Path) -> None:
    """Found before the transaction's own statements ran (a value refused as it is bound):
    the transaction is made again without it, and its caller never hears of it."""
    store = open_store(store_at)
    try:
        victim, other = _process(store), _process(store)
        store.update_process(victim, defer=True, reason="x\ud800")
        store.update_process(other, reason="own")  # a transaction of its own, carrying it
        assert store.get_process(other)["reason"] == "own"
        assert isinstance(store.refusals_of(victim), WriteRefused)
    finally:
        store.close()


def test_the_store_closes_with_a_refused_write_waiting(store_at: str | Path) -> None:
    store = open_store(store_at)
    victim = _process(store)
    store.update_process(victim, defer=True, exit_code=2**70)
    store.close()  # (raised the refusal, each time, and left it waiting)
    reopened = open_store(store_at)
    try:
        assert reopened.get_process(victim)["exit_code"] is None
    finally:
        reopened.close()


def test_text_no_database_takes_is_kept_escaped(store_at: str | Path) -> None:
    """A tool's log line or a result with a lone surrogate (JSON from a sandbox can hold one)
    in a deferred end: stored escaped, read back as given; nothing refused."""
    store = open_store(store_at)
    try:
        pid = _process(store)
        ends: list[bool] = []
        store.end_later(pid, {"state": "exited", "result": {"r": "a\udc80"}},
                        [(pid, "log", {"text": "b\ud800"}), (pid, "state", {"new": "exited"})],
                        lambda ended, seqs: ends.append(ended))
        store.commit_deferred()
        assert ends == [True] and store.refusals_of(pid) is None
        assert store.get_process(pid)["result"] == {"r": "a\udc80"}
        assert next(e["data"] for e in store.events(pid=pid)) == {"text": "b\ud800"}
    finally:
        store.close()


def test_an_audit_record_no_store_takes_is_refused_before_it_is_chained(
        store_at: str | Path) -> None:
    """An audit record is never set aside (the chain after it links to it): one no store
    can take is a typed error before it is chained, never waiting."""
    store = open_store(store_at)
    try:
        with pytest.raises(InvalidArgument, match="surrogate"):
            store.append_audit(AuditRecord(phase="intent", syscall="x", detail={"t": "\ud800"}),
                               defer=True)
        assert not store.deferred
        if is_database(store_at):
            with pytest.raises(InvalidArgument, match="NUL"):
                store.append_audit(AuditRecord(phase="intent", syscall="x", resource="a\0"),
                                   defer=True)
        store.append_audit(AuditRecord(phase="admin", syscall="y"))
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()


def test_one_refused_checkpoint_drops_no_other_process_s(store_at: str | Path) -> None:
    """The checkpoints that wait for one commit, of every process, are one deferred write
    (`CheckpointBatch`): the refused one alone is dropped; the others are durable."""
    store = open_store(store_at)
    try:
        before, victim, after = _process(store), _process(store), _process(store)
        store.save_checkpoint(before, 1, {"n": "before"}, defer=True)
        store.save_checkpoint(victim, 2**70, {"n": "victim"}, defer=True)
        store.save_checkpoint(after, 1, {"n": "after"}, defer=True)
        store.commit_deferred()
        assert not store.deferred
        assert isinstance(store.refusals_of(victim), WriteRefused)
        assert store.refusals_of(before) is None and store.refusals_of(after) is None
        for pid, n in ((before, "before"), (after, "after")):
            checkpoint = store.checkpoint(pid)
            assert checkpoint is not None and checkpoint["state"] == {"n": n}
        assert store.checkpoint(victim) is None
    finally:
        store.close()


def test_a_transaction_that_had_run_when_the_refusal_came_fails_once_typed(
        store_at: str | Path) -> None:
    """PostgreSQL finds an integer out of range only when the batch is sent, after the
    transaction's own statements: that transaction wrote nothing, and says so with a store
    failure that passes (a `Conflict`); the next one works. (SQLite refuses it as it is
    bound, before them: the transaction is made again without it.)"""
    store = open_store(store_at)
    try:
        victim, other = _process(store), _process(store)
        store.update_process(victim, defer=True, exit_code=2**70)
        if is_database(store_at):
            with pytest.raises(RefusedBeside) as failed:
                store.update_process(other, reason="own")
            assert failed.value.code == "CONFLICT"
            assert store.get_process(other)["reason"] is None
            store.update_process(other, reason="own")
        else:
            store.update_process(other, reason="own")
        assert store.get_process(other)["reason"] == "own"
        assert isinstance(store.refusals_of(victim), WriteRefused)
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()
