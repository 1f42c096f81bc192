"""The checkpoint log drops a process's old checkpoints once every `TRIM_EVERY` of its
checkpoints (a step writes two), not at each: the log on disk stays bounded (the retention
plus `TRIM_EVERY - 1`), across a restart and a failed commit too, and what is read of it is
exactly the retention's. Both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.kernel.faults import STORE_FAULTS
from broker.store.checkpoints import TRIM_EVERY
from broker.store.opening import open_store
from tests.broker.kernel.faulty_store import Fault
from tests.broker.store.conftest import raw

KEEP = 3
BOUND = KEEP + TRIM_EVERY - 1


def _on_disk(store_at: Path | str, pid: int) -> int:
    with raw(store_at) as db:
        return int(db.execute("SELECT COUNT(*) FROM checkpoint_log WHERE pid=? AND pinned=0",
                              (pid,)).fetchone()[0])


def _steps(store: object, store_at: Path | str, pid: int, first: int, count: int,
           deferred: bool) -> list[int]:
    """Checkpoints of steps first.. (two a step, as the scheduler writes them), and the
    process's unpinned rows on disk after each step."""
    seen = []
    for step in range(first, first + count):
        store.save_checkpoint(pid, step, {"step": step, "pending": {"tool": "t"}},  # type: ignore[attr-defined]
                              defer=deferred)
        store.save_checkpoint(pid, step + 1, {"step": step + 1}, defer=deferred)  # type: ignore[attr-defined]
        store.commit_deferred()  # type: ignore[attr-defined]
        seen.append(_on_disk(store_at, pid))
    return seen


@pytest.mark.parametrize("deferred", [False, True])
def test_the_log_stays_bounded_and_reads_as_the_retention(store_at: Path | str,
                                                          deferred: bool) -> None:
    store = open_store(store_at)
    try:
        store.set_checkpoint_retention(KEEP)
        seen = _steps(store, store_at, 7, 0, 3 * TRIM_EVERY, deferred)
        assert max(seen) <= BOUND
        assert max(seen) > KEEP  # (trimmed less often than each write)
        kept = store.checkpoint_log(7)
        assert [c["step"] for c in kept] == [3 * TRIM_EVERY - 1, 3 * TRIM_EVERY - 1,
                                             3 * TRIM_EVERY]
        with raw(store_at) as db:
            oldest = int(db.execute("SELECT MIN(id) FROM checkpoint_log WHERE pid=7"
                                    ).fetchone()[0])
        if oldest < kept[0]["id"]:  # on disk, past the retention: read as dropped
            assert store.logged_checkpoint(7, oldest) is None
        assert store.logged_checkpoint(7, kept[0]["id"]) is not None
        assert store.checkpoint(7)["step"] == 3 * TRIM_EVERY  # type: ignore[index]
    finally:
        store.close()


def test_a_restart_drops_them_at_the_first_checkpoint(store_at: Path | str) -> None:
    """Counts kept in memory are lost with the broker: a process's first checkpoint in a store
    opened again drops the old ones, so restarts between few steps cannot grow the log."""
    for _ in range(4):
        store = open_store(store_at)
        try:
            store.set_checkpoint_retention(KEEP)
            assert max(_steps(store, store_at, 7, 0, TRIM_EVERY // 2, False)) <= BOUND
        finally:
            store.close()
    assert _on_disk(store_at, 7) <= BOUND


def test_pinned_ones_are_kept_and_read(store_at: Path | str) -> None:
    store = open_store(store_at)
    try:
        store.set_checkpoint_retention(KEEP)
        _steps(store, store_at, 7, 0, 1, False)
        pinned = store.checkpoint(7)["id"]  # type: ignore[index]
        store.pin_checkpoint(pinned)
        _steps(store, store_at, 7, 1, 2 * TRIM_EVERY, False)
        ids = [c["id"] for c in store.checkpoint_log(7)]
        assert ids[0] == pinned and len(ids) == KEEP + 1
        assert store.logged_checkpoint(7, pinned) is not None
    finally:
        store.close()


def test_a_failed_commit_that_would_have_dropped_them_leaves_the_next_to(
        store_at: Path | str) -> None:
    """The transaction due to drop the old checkpoints fails (the disk full): the drop was
    rolled back with it, so the next checkpoint drops them, not `TRIM_EVERY` later."""
    store = open_store(store_at)
    try:
        store.set_checkpoint_retention(KEEP)
        # Dropped at the 1st and the (1 + TRIM_EVERY)-th: the log is at its bound, and the
        # next checkpoint is due to drop.
        assert _steps(store, store_at, 7, 0, TRIM_EVERY, False)[-1] == BOUND
        with Fault(store_at) as fault:
            fault.install("checkpoint_log")
            fault.set(True)
            with pytest.raises(STORE_FAULTS):
                store.save_checkpoint(7, 100, {"step": 100})
            fault.set(False)
        assert max(_steps(store, store_at, 7, 200, TRIM_EVERY, False)) <= BOUND
    finally:
        store.close()


def test_a_process_this_store_made_drops_nothing_at_its_first_checkpoint(
        db_path: Path) -> None:
    """It has no old checkpoints: its first checkpoint runs no DELETE (one a step, each an
    index search, for every process a scheduler starts), while a process it did not make
    (another broker's, or one made before a restart) still drops them at its first."""
    store = open_store(db_path)
    try:
        made = [store.insert_process(parent=None, image="i", version="1", state="runnable",
                                     root="/", cwd="/") for _ in range(3)]
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        for pid in made:
            _steps(store, db_path, pid, 0, 1, True)
        assert not [s for s in statements if s.startswith("DELETE FROM checkpoint_log")]
        _steps(store, db_path, 7, 0, 1, True)  # not made here: dropped at its first
        assert [s for s in statements if s.startswith("DELETE FROM checkpoint_log")]
        store._db.set_trace_callback(None)  # type: ignore[attr-defined]
    finally:
        store.close()
