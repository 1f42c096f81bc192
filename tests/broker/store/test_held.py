"""Held audit records (`append_audit(defer=True)`, `AuditChain._defer_rows`): a record's seq
and hash are fixed when it is held, and it is committed by the store's next transaction (a
write of any kind, or before a read), ahead of what that transaction writes; a rolled-back
transaction leaves it waiting; closing commits it before the head is signed; a crash loses it
and nothing else, and never leaves the anchor ahead of the chain. Where other brokers append
to the chain too, nothing is held. Checked from a second connection, on both backends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from broker.caps import Capability
from broker.errors import Conflict
from broker.store import AuditRecord, args_hash
from broker.store.opening import open_store
from broker.store.vouch import PAYLOAD_HASH, RESULT_HASH, digest
from tests.broker.store.conftest import raw
from tests.conftest import bare_env

CALL = AuditRecord(phase="intent", syscall="tool.call", pid=7, resource="noop")
ARGS = msgpack.packb({"name": "noop"})  # a tool call's arguments, kept for replay


def _call() -> AuditRecord:
    """A tool call's intent that vouches for its stored arguments."""
    return AuditRecord(phase="intent", syscall="tool.call", pid=7, resource="noop",
                       args_hash=args_hash({"name": "noop"}),
                       detail={PAYLOAD_HASH: digest(ARGS)})


def _seqs(store_at: str | Path) -> list[int]:
    """The audit seqs another connection sees."""
    with raw(store_at) as db:
        return [r[0] for r in db.execute("SELECT seq FROM audit ORDER BY seq").fetchall()]


def test_a_held_record_has_its_seq_at_once_and_goes_with_the_next_write(
        store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        on_disk = _seqs(store_at)
        head = store.head_seq
        seq = store.append_audit(_call(), payload=ARGS, defer=True)
        assert seq == head + 1
        assert _seqs(store_at) == on_disk  # not yet durable
        after = store.append_audit(AuditRecord(phase="outcome", syscall="tool.call", pid=7,
                                               inv=None, detail={"intent": seq, "ok": True}))
        assert after == seq + 1
        assert _seqs(store_at) == [*on_disk, seq, seq + 1]  # one transaction, in order
        assert store.head_seq == seq + 1
        assert store.payload(seq) == ARGS
        assert store.audit_problems()[1] == []
    finally:
        store.close()


def test_held_records_go_with_any_write_and_move_the_anchor(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        intent = AuditRecord(phase="intent", syscall="fs.read", pid=7, inv=3)
        result = msgpack.packb("hello")
        outcome = AuditRecord(phase="outcome", syscall="fs.read", pid=7, inv=3,
                              detail={"ok": True, RESULT_HASH: digest(result)})
        first = store.append_audit(CALL, defer=True)
        pair = store.append_pair(intent, outcome, result, defer=True)
        assert pair == first + 1 and outcome.detail["intent"] == pair
        store.save_checkpoint(7, 1, {"cwd": "/"})  # no audit record of its own
        assert _seqs(store_at)[-3:] == [first, pair, pair + 1]
        assert store.head_seq == pair + 1
        head, _ = store.read_anchor()
        assert head is not None and head.seq == pair + 1  # the anchor's head moved with it
        assert store.audit_problems()[1] == []
    finally:
        store.close()


def test_a_read_commits_held_records_first(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        seq = store.append_audit(CALL, defer=True)
        assert [r.seq for r in store.audit_records(after=seq - 1)] == [seq]
        assert _seqs(store_at)[-1] == seq
    finally:
        store.close()


def test_a_rolled_back_write_leaves_held_records_waiting_and_the_chain_whole(
        store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        on_disk = _seqs(store_at)
        seq = store.append_audit(CALL, defer=True)
        gone = Capability(kind="fs", scope="/x", rights=frozenset({"write"}), uses=1, owner=7)
        with pytest.raises(Conflict):  # a use of a capability the store does not hold
            store.append_audit(AuditRecord(phase="intent", syscall="fs.write", pid=7),
                               spend=gone, spent_uses=None)
        assert _seqs(store_at) == on_disk and store.deferred
        assert store.append_audit(AuditRecord(phase="intent", syscall="clock.now",
                                              pid=7)) == seq + 1
        assert _seqs(store_at) == [*on_disk, seq, seq + 1] and not store.deferred
        assert store.audit_problems()[1] == []
    finally:
        store.close()


def test_closing_commits_held_records_before_the_head_is_signed(store_at: str | Path) -> None:
    store = open_store(store_at)
    seq = store.append_audit(CALL, defer=True)
    store.close()
    assert _seqs(store_at)[-1] == seq
    again = open_store(store_at)
    try:
        assert again.head_seq == seq  # opening found nothing between chain and anchor
        _, signed = again.read_anchor()
        assert signed is not None and signed.seq == seq
        assert again.audit_problems()[1] == []
    finally:
        again.close()


CHILD = """
import os, sys
from broker.store import AuditRecord, args_hash
from broker.store.opening import open_store
from broker.store.vouch import PAYLOAD_HASH, RESULT_HASH, digest
store = open_store(sys.argv[1])
durable = store.append_audit(AuditRecord(phase="intent", syscall="clock.now", pid=7))
store.append_audit(AuditRecord(phase="intent", syscall="tool.call", pid=7), defer=True)
print(durable, flush=True)
os.kill(os.getpid(), 9)
"""


def test_a_crash_loses_the_held_record_and_leaves_the_anchor_true(tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    key = tmp_path / "audit.key"
    done = subprocess.run([sys.executable, "-c", CHILD, str(db)], capture_output=True,
                          text=True, env=bare_env(LIBOS_AUDIT_KEY=str(key)),
                          cwd=Path(__file__).parents[3], timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr
    durable = int(done.stdout.split()[0])
    assert _seqs(db)[-1] == durable  # the held record never reached the disk
    store = open_store(db, audit_key=key)
    try:
        # The anchor never ran ahead of the chain: opening found nothing to record.
        assert [r.record.syscall for r in store.audit_records(after=durable)] == []
        assert store.audit_problems(public_key=None)[1] == []
        # the chain goes on where it stood
        assert store.append_audit(CALL, defer=True) == durable + 1
    finally:
        store.close()
    assert os.path.exists(key)


def test_nothing_is_held_where_other_brokers_append_too(pg_database: str) -> None:
    store = open_store(pg_database, broker="a")
    try:
        seq = store.append_audit(CALL, defer=True)
        assert _seqs(pg_database)[-1] == seq  # appended at once
        assert not store.deferred
    finally:
        store.close()
