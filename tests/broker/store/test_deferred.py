"""Group commit (`Connected.defer`): a checkpoint saved with `defer` is committed with the
store's next write, is seen by the writer's own reads, waits again when that write rolls
back, and is written when the store closes. Checked from a second connection, on both
backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker.caps import Capability
from broker.errors import Conflict
from broker.store import AuditRecord
from broker.store.opening import open_store
from tests.broker.store.conftest import raw

PENDING = {"pending": {"tool": "now", "args": {}}, "cwd": "/"}


def _on_disk(store_at: str | Path) -> tuple[list[Any], int]:
    """(checkpointed steps of pid 7, audit records) as another connection sees them."""
    with raw(store_at) as db:
        steps = [r[0] for r in db.execute("SELECT step FROM checkpoint_log WHERE pid=7 ORDER BY id"
                                          " DESC LIMIT 1").fetchall()]
        records = db.execute("SELECT COUNT(*) FROM audit").fetchone()[0]
    return steps, records


def test_a_deferred_checkpoint_is_committed_with_the_next_record(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        _, records = _on_disk(store_at)
        store.save_checkpoint(7, 3, PENDING, defer=True)
        assert _on_disk(store_at) == ([], records)  # not yet: it waits for the next write
        store.append_audit(AuditRecord(phase="intent", syscall="tool.call", pid=7))
        assert _on_disk(store_at) == ([3], records + 1)
    finally:
        store.close()


def test_the_writers_own_read_sees_a_deferred_checkpoint(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        store.save_checkpoint(7, 4, PENDING, defer=True)
        latest = store.checkpoint(7)
        assert latest is not None and latest["step"] == 4
        assert latest["state"]["pending"] == PENDING["pending"]
        assert _on_disk(store_at)[0] == [4]  # the read committed it first
    finally:
        store.close()


def test_a_rolled_back_write_leaves_the_deferred_one_waiting(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        store.save_checkpoint(7, 5, PENDING, defer=True)
        gone = Capability(kind="fs", scope="/x", rights=frozenset({"write"}), uses=1, owner=7)
        with pytest.raises(Conflict):  # a use of a capability the store does not hold
            store.append_audit(AuditRecord(phase="intent", syscall="fs.write", pid=7),
                               spend=gone, spent_uses=None)
        assert _on_disk(store_at)[0] == []
        assert store.deferred
        store.append_audit(AuditRecord(phase="intent", syscall="tool.call", pid=7))
        assert _on_disk(store_at)[0] == [5]
        assert not store.deferred
    finally:
        store.close()


def test_closing_writes_what_was_deferred(store_at: str | Path) -> None:
    store = open_store(store_at)
    store.save_checkpoint(7, 6, PENDING, defer=True)
    store.close()
    assert _on_disk(store_at)[0] == [6]


def test_a_deferred_checkpoint_keeps_what_was_saved_not_what_changed(
        store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        state = {"pending": {"tool": "now", "args": {}}, "cwd": "/"}
        store.save_checkpoint(7, 1, state, defer=True)
        state["cwd"] = "/elsewhere"
        latest = store.checkpoint(7)
        assert latest is not None and latest["state"]["cwd"] == "/"
    finally:
        store.close()


def test_a_read_only_store_cannot_defer(tmp_path: Path) -> None:
    open_store(tmp_path / "libos.db").close()
    reader = open_store(tmp_path / "libos.db", writer=False)
    try:
        with pytest.raises(Conflict, match="read-only"):
            reader.save_checkpoint(7, 1, PENDING, defer=True)
    finally:
        reader.close()


def _checkpoints_on_disk(store_at: str | Path) -> tuple[dict[int, int], list[tuple[int, int]],
                                                        list[tuple[int, int]]]:
    """(latest step by pid, the log's (pid, step) in order, observations) another connection
    sees."""
    with raw(store_at) as db:
        latest = dict(db.execute("SELECT pid, step FROM checkpoint_log ORDER BY id").fetchall())
        log = [tuple(r) for r in db.execute(
            "SELECT pid, step FROM checkpoint_log ORDER BY id").fetchall()]
        seen = [tuple(r) for r in db.execute(
            "SELECT pid, step FROM observations ORDER BY pid, step").fetchall()]
    return latest, log, seen


def _step(store: Any, pid: int, step: int) -> None:
    """A step of process `pid` as the scheduler checkpoints it: before (pending), after."""
    store.save_checkpoint(pid, step, PENDING, defer=True)
    store.save_checkpoint(pid, step + 1, {"pending": None, "cwd": "/"}, {
        "step": step, "action": {"tool": "now", "args": {}}, "result": 1.5, "error": None},
        defer=True)


def test_deferred_checkpoints_of_many_processes_go_in_one_write(store_at: str | Path) -> None:
    """Checkpoints deferred for the same transaction, of any process, are written together
    (one deferred write, so a group commit carries them for one): each is logged in the order
    saved, each process's last is its latest, and the retention holds per process."""
    store = open_store(store_at)
    try:
        store.set_checkpoint_retention(3)
        before = store.deferred_total
        for step in range(2):
            _step(store, 7, step)
            _step(store, 8, step)
        assert store.deferred_total == before + 1
        assert _checkpoints_on_disk(store_at) == ({}, [], [])  # it waits for the next write
        store.append_audit(AuditRecord(phase="intent", syscall="tool.call", pid=7))
        latest, log, seen = _checkpoints_on_disk(store_at)
        assert latest == {7: 2, 8: 2}
        # Each logged in the order saved; the latest 3 of each process kept, the retention
        # applied once the whole batch is in.
        assert log == [(7, 1), (8, 1), (7, 1), (7, 2), (8, 1), (8, 2)]
        assert seen == [(7, 0), (7, 1), (8, 0), (8, 1)]
        checkpoint = store.checkpoint(7)
        assert checkpoint is not None and checkpoint["id"] == store.checkpoint_log(7)[-1]["id"]
        # Once written, the batch takes no more: the next checkpoint waits on its own.
        _step(store, 7, 2)
        assert store.deferred_total == before + 2
        store.append_audit(AuditRecord(phase="intent", syscall="tool.call", pid=7))
        assert _checkpoints_on_disk(store_at)[0] == {7: 3, 8: 2}
    finally:
        store.close()


def test_a_rolled_back_batch_of_checkpoints_is_written_whole_by_the_next_write(
        store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        _step(store, 7, 0)
        _step(store, 8, 0)
        gone = Capability(kind="fs", scope="/x", rights=frozenset({"write"}), uses=1, owner=7)
        with pytest.raises(Conflict):  # the batch runs in this transaction, which rolls back
            store.append_audit(AuditRecord(phase="intent", syscall="fs.write", pid=7),
                               spend=gone, spent_uses=None)
        assert _checkpoints_on_disk(store_at) == ({}, [], [])
        _step(store, 7, 1)  # a batch that ran (and rolled back) takes no more: a new one
        store.append_audit(AuditRecord(phase="intent", syscall="tool.call", pid=7))
        latest, log, seen = _checkpoints_on_disk(store_at)
        assert latest == {7: 2, 8: 1}
        assert log == [(7, 0), (7, 1), (8, 0), (8, 1), (7, 1), (7, 2)]
        assert seen == [(7, 0), (7, 1), (8, 0)]
    finally:
        store.close()
