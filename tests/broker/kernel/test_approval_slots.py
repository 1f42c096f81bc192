"""Per-process slots for pending approval requests: in order, woken when a slot frees, failing
at the deadline (on the real clock and on a fake one), never leaking a slot; and the store
finds what the queue looks for by index, not by a scan."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from broker import FakeClock, Kernel, LimitExceeded
from broker.approvals.stored import answer_in_store
from broker.kernel.approval_slots import PendingSlots
from broker.providers.clock import RealClock
from broker.store import SQLiteStore
from tests.conftest import open_image


@pytest.mark.parametrize("clock", [FakeClock(), RealClock()], ids=["fake", "real"])
async def test_slots_are_taken_in_order_and_fail_at_the_deadline(clock: object) -> None:
    slots = PendingSlots(clock, limit=2)  # type: ignore[arg-type]
    now = clock.now()  # type: ignore[attr-defined]
    await slots.acquire(7, now + 100)
    await slots.acquire(7, now + 100)
    await slots.acquire(8, now + 100)  # another process has slots of its own
    order: list[str] = []

    async def waiter(name: str, deadline: float) -> None:
        try:
            await slots.acquire(7, deadline)
            order.append(name)
        except LimitExceeded:
            order.append(f"{name}: refused")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first", now + 100)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "late", now + 0.2)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter, "second", now + 100)
        await trio.testing.wait_all_tasks_blocked()
        assert slots.pending(7) == 2 and slots.waiting(7) == 3
        if isinstance(clock, FakeClock):
            clock.advance(0.5)
        with trio.fail_after(5):
            while "late: refused" not in order:
                await trio.sleep(0.01)
        for handed in (2, 3):  # one slot at a time: each goes to the longest waiting
            slots.release(7)
            await trio.testing.wait_all_tasks_blocked()
            assert len(order) == handed
    assert order == ["late: refused", "first", "second"]
    slots.release(7)
    slots.release(7)
    slots.release(8)
    assert slots.pending(7) == slots.waiting(7) == slots.pending(8) == 0


async def test_a_cancelled_wait_leaves_no_slot_taken() -> None:
    slots = PendingSlots(RealClock(), limit=1)
    await slots.acquire(1, 1e12)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slots.acquire, 1, 1e12)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    slots.release(1)
    assert slots.pending(1) == 0
    await slots.acquire(1, 1e12)  # the slot is there to take
    assert slots.pending(1) == 1


def test_the_limit_is_a_positive_integer() -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            PendingSlots(RealClock(), bad)  # type: ignore[arg-type]


async def test_the_queue_finds_requests_by_index(kernel: Kernel) -> None:
    """No query of the queue's scans the approvals table: creating a request looks up the
    process's pending ones; the watcher reads only due rows (and, through a partial index,
    answers not applied yet)."""
    store = kernel.store
    queries = {
        "approvals_pid": ("SELECT * FROM approvals WHERE pid=? AND state='pending' AND "
                          "syscall=? AND args_hash=?", (1, "fs.write", "x")),
        "approvals_due": ("SELECT id FROM approvals WHERE state='pending' AND deadline<=?",
                          (1.0,)),
    }
    for index, (sql, params) in queries.items():
        plan = " ".join(str(tuple(r)) for r in store._query(f"EXPLAIN QUERY PLAN {sql}", params))
        assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, plan
    # Answers from other OS processes: the partial index holds only unapplied ones.
    kernel.store.unapplied_answers()  # INDEXED BY: an error if the index could not serve


async def test_waiting_requests_are_woken_not_polled(kernel: Kernel, monkeypatch: Any) -> None:
    """Ten calls wait: nothing reads their rows while they wait (the watcher's few queries
    do not grow with them); an answer in the broker wakes its call at once, and one written
    by another OS process wakes it at the watcher's next look."""
    await open_image(kernel, needs=("fs:/**:read,write",))
    (Path(kernel.fs.root) / "out").mkdir()  # type: ignore[attr-defined]
    pid = kernel.spawn("agent", caps=[{"kind": "fs", "scope": "/out/**", "rights": ["write"],
                                        "effect": "ask"}])
    reads = Counter[str]()
    for name in ("get_approval", "list_approvals", "pending_approvals_of"):
        method = getattr(kernel.store, name)
        monkeypatch.setattr(kernel.store, name, _counted(reads, name, method))
    done: list[float] = []
    pending = lambda: kernel.store.expired_approvals(1e18)  # noqa: E731 (every pending id)

    async def call(i: int) -> None:
        await kernel.call_tool(pid, "write_file", {"path": f"/out/{i}.txt", "data": "x"})
        done.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(call, i)
        with trio.fail_after(5):
            while len(pending()) < 10:
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        reads.clear()
        await trio.sleep(1.0)  # six or seven ticks of the watcher
        assert reads == Counter()
        first, second, *_ = pending()
        # Woken directly: with the watcher blind to answers, only the answer's own wake-up
        # can finish the call (no timing: a loaded machine takes what it takes).
        with monkeypatch.context() as blind:
            blind.setattr(kernel.store, "unapplied_answers", lambda: [])
            kernel.approve(first)
            with trio.fail_after(5):
                while not done:
                    await trio.sleep(0.01)
        assert len(done) == 1
        looks = Counter[str]()
        monkeypatch.setattr(kernel.store, "unapplied_answers",
                            _counted(looks, "look", kernel.store.unapplied_answers))
        reader = SQLiteStore(kernel.store.path, writer=False)
        answer_in_store(reader, second, "once", who="cli:someone", now=time.time())
        reader.close()
        with trio.fail_after(5):
            while len(done) < 2:
                await trio.sleep(0.01)
        assert looks["look"] >= 1 and len(done) == 2  # the watcher looked, and woke that one
        nursery.cancel_scope.cancel()


def _counted(reads: Counter[str], name: str, method: Any) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        reads[name] += 1
        return method(*args, **kwargs)
    return counted
