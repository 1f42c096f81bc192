"""Leases with fencing tokens, on both backends: a broker whose lease expired and was taken
by another can no longer write for the process (renew, fenced writes), and writes nothing;
takes are one at a time even when brokers race."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Conflict, InvalidArgument
from broker.store import AuditRecord
from broker.store.leases import FENCE, LeaseLost
from broker.store.opening import open_store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def brokers(store_at: str | Path, clock: Clock) -> Iterator[list]:
    """Two brokers' connections to one store (the lease is their only arbiter)."""
    open_store(store_at, clock=clock).close()  # made, migrated
    opened = [open_store(store_at, clock=clock, writer=False) for _ in range(2)]
    yield opened
    for store in opened:
        store.close()


def _write(store, lease, value: str) -> None:  # type: ignore[no-untyped-def]
    with store.fenced(lease) as db:
        db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                   " SET value=excluded.value", ("owner", value))


def test_a_broker_whose_lease_was_taken_cannot_write(brokers: list, clock: Clock) -> None:
    a, b = brokers
    lease_a = a.take_lease(7, "broker-a", ttl=10)
    assert (lease_a.token, lease_a.expires) == (1, 1010.0)
    _write(a, lease_a, "a")
    with pytest.raises(Conflict, match="leased to broker 'broker-a'"):
        b.take_lease(7, "broker-b", ttl=10)  # not expired yet
    assert a.take_lease(7, "broker-a", ttl=10).token == 1  # its holder renews, same token
    clock.now += 30  # broker a is paused past its lease ...
    lease_b = b.take_lease(7, "broker-b", ttl=10)  # ... and b takes the process
    assert lease_b.token == 2
    for refused in (lambda: _write(a, lease_a, "a again"),
                    lambda: a.renew_lease(lease_a, 10)):
        with pytest.raises(LeaseLost, match="taken by another broker"):
            refused()
    assert a.meta("owner") == "a"  # nothing of a's late writes landed
    _write(b, lease_b, "b")
    assert b.meta("owner") == "b"
    assert a.lease_of(7) == lease_b


def test_a_brokers_leases_are_renewed_at_once_and_the_lost_ones_named(brokers: list,
                                                                     clock: Clock) -> None:
    a, b = brokers
    kept, taken, lapsed = (a.take_lease(pid, "broker-a", ttl=10) for pid in (1, 2, 3))
    clock.now += 5
    kept = a.renew_leases([kept], ttl=10)[0][0]  # 1 now lasts to 1015; 2 and 3 to 1010
    clock.now += 6
    other = b.take_lease(2, "broker-b", ttl=10)  # 2 expired and was taken; 3 expired
    renewed, lost = a.renew_leases([kept, taken, lapsed], ttl=10)
    assert renewed == [dataclasses.replace(kept, expires=clock.now + 10)]
    assert lost == [taken, lapsed]
    assert [a.lease_of(pid) for pid in (1, 2, 3)] == [renewed[0], other, lapsed]
    assert a.renew_leases([], ttl=10) == ([], [])
    many = [a.take_lease(pid, "broker-a", ttl=10) for pid in range(10, 1010)]
    clock.now += 1
    renewed, lost = a.renew_leases(many, ttl=10)  # more than one statement's worth
    assert lost == [] and [lease.pid for lease in renewed] == list(range(10, 1010))
    assert {a.lease_of(pid).expires for pid in (10, 500, 1009)} == {clock.now + 10}


def test_an_expired_lease_fences_its_holder_before_anyone_takes_it(brokers: list,
                                                                    clock: Clock) -> None:
    a, _ = brokers
    lease = a.take_lease(3, "broker-a", ttl=5)
    clock.now += 6
    with pytest.raises(LeaseLost, match="expired"):
        _write(a, lease, "late")
    assert a.meta("owner") is None


def test_a_released_lease_is_taken_at_once_with_a_new_token(brokers: list) -> None:
    a, b = brokers
    lease = a.take_lease(1, "broker-a", ttl=60)
    a.release_lease(lease)
    taken = b.take_lease(1, "broker-b", ttl=60)
    assert taken.token == 2 and taken.holder == "broker-b"
    a.release_lease(lease)  # an old lease's release leaves the new holder alone
    assert b.lease_of(1) == taken
    with pytest.raises(InvalidArgument):
        b.take_lease(2, "", ttl=60)


def test_racing_brokers_take_a_lease_once(store_at: str | Path, clock: Clock) -> None:
    open_store(store_at, clock=clock).close()
    stores = [open_store(store_at, clock=clock, writer=False) for _ in range(4)]
    won: list[int] = []
    lost: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def take(i: int) -> None:
        start.wait()
        for pid in range(20):
            try:
                stores[i].take_lease(pid, f"broker-{i}", ttl=60)
                won.append(pid)
            except Conflict as exc:
                lost.append(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert sorted(won) == list(range(20))  # each process leased to exactly one broker
        assert len(lost) == 20 * (len(stores) - 1)
        assert all(stores[0].lease_of(pid).token == 1 for pid in range(20))
    finally:
        for s in stores:
            s.close()


def test_a_leased_tasks_deferred_checkpoint_is_fenced_never_carried(store_at: str | Path,
                                                                     clock: Clock) -> None:
    """Group commit meets fencing: a checkpoint a leased task defers is written at once under
    its own lease, so a broker that lost the lease is refused then, and no other task's
    transaction carries the stale checkpoint in later."""
    pending = {"pending": {"tool": "now", "args": {}}, "cwd": "/"}
    writer = open_store(store_at, clock=clock)
    other = open_store(store_at, clock=clock, writer=False)
    try:
        lost = writer.take_lease(7, "broker-a", ttl=10)
        held = writer.take_lease(8, "broker-a", ttl=60)
        clock.now += 30
        other.take_lease(7, "broker-b", ttl=10)
        for lease, step in ((lost, 1), (held, 2)):
            token = FENCE.set(lease)
            try:
                if lease is lost:
                    with pytest.raises(LeaseLost):
                        writer.save_checkpoint(7, step, pending, defer=True)
                else:
                    writer.save_checkpoint(8, step, pending, defer=True)
            finally:
                FENCE.reset(token)
        assert not writer.deferred  # neither waits for another task's transaction
        writer.append_audit(AuditRecord(phase="intent", syscall="tool.call", pid=9))
        assert other.checkpoint(7) is None  # the stale one never landed
        held_checkpoint = other.checkpoint(8)
        assert held_checkpoint is not None and held_checkpoint["step"] == 2
    finally:
        other.close()
        writer.close()
