"""The slot limiter behind the live-sandbox and per-process concurrency bounds."""

from __future__ import annotations

import pytest
import trio

from broker import LimitExceeded
from broker.kernel.slots import Slots


async def _fan(slots: Slots, pid: int, n: int, hold_for: float, peak: dict[str, int],
               timeout: float = 10.0) -> None:
    async def one() -> None:
        async with slots.hold(pid, timeout=timeout):
            peak["now"] += 1
            peak["max"] = max(peak["max"], peak["now"])
            await trio.sleep(hold_for)
            peak["now"] -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)


async def test_holders_beyond_the_bound_wait_their_turn(autojump_clock: object) -> None:
    slots = Slots("shell.run", 3)
    peak = {"now": 0, "max": 0}
    start = trio.current_time()
    await _fan(slots, 1, 10, 1.0, peak)
    assert peak["max"] == 3
    assert trio.current_time() - start == pytest.approx(4.0)  # ceil(10 / 3) rounds
    assert slots.held() == 0 and slots.held(1) == 0


async def test_each_process_has_its_own_bound_under_the_brokers(autojump_clock: object) -> None:
    slots = Slots("sandbox", 2, total=3)
    peaks = {pid: {"now": 0, "max": 0} for pid in (1, 2)}
    total = {"max": 0}

    async def watch() -> None:
        while True:
            total["max"] = max(total["max"], slots.held())
            await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        async with trio.open_nursery() as fans:
            fans.start_soon(_fan, slots, 1, 5, 1.0, peaks[1])
            fans.start_soon(_fan, slots, 2, 5, 1.0, peaks[2])
        nursery.cancel_scope.cancel()
    assert peaks[1]["max"] == 2 and peaks[2]["max"] == 2
    assert total["max"] == 3


async def test_no_slot_by_the_deadline_is_limit_exceeded(autojump_clock: object) -> None:
    slots = Slots("net.fetch", 1)
    async with slots.hold(7, timeout=1.0):
        start = trio.current_time()
        with pytest.raises(LimitExceeded, match=r"no net\.fetch slot free within 2 s"):
            async with slots.hold(7, timeout=2.0):
                pass  # pragma: no cover
        assert trio.current_time() - start == pytest.approx(2.0)
        assert slots.held(7) == 1
    async with slots.hold(7, timeout=0):  # freed: no wait at all
        assert slots.held(7) == 1
    assert slots.held() == 0


async def test_a_cancelled_waiter_leaves_nothing_held(autojump_clock: object) -> None:
    slots = Slots("shell.run", 1)
    async with trio.open_nursery() as nursery, slots.hold(1, timeout=1.0):
        async def waiter() -> None:
            async with slots.hold(1, timeout=100.0):
                await trio.sleep_forever()  # pragma: no cover

        nursery.start_soon(waiter)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert slots.held() == 0
    async with slots.hold(1, timeout=0):
        pass


async def _tree(slots: Slots, pid: int, depth: int, fan: int, levels: int,
                timeout: float) -> None:
    """A sandboxed call at `depth` that holds its slot while it calls `fan` children."""
    async with slots.hold(pid, timeout=timeout, depth=depth):
        await trio.sleep(0.1)
        if depth + 1 < levels:
            async with trio.open_nursery() as nursery:
                for _ in range(fan):
                    nursery.start_soon(_tree, slots, pid, depth + 1, fan, levels, timeout)


async def test_nested_fan_out_cannot_deadlock_the_bound(autojump_clock: object) -> None:
    """Without levels, 8 callers fill 8 slots and their children wait for ever; with them,
    room is kept for every level below, and the whole tree completes."""
    flat = Slots("sandbox", 8)
    starved = False
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(_tree, flat, 1, 0, 2, 2, 5.0)
    except* LimitExceeded:
        starved = True
    assert starved
    leveled = Slots("sandbox", 8, total=8, levels=8)
    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(_tree, leveled, 1, 0, 2, 4, 1000.0)
    assert leveled.held() == 0


async def test_a_chain_as_deep_as_the_bound_fits(autojump_clock: object) -> None:
    slots = Slots("sandbox", 8, total=8, levels=8)
    with trio.fail_after(10):
        await _tree(slots, 1, 0, 1, 8, 1.0)
    small = Slots("sandbox", 3, levels=8)  # a bound below the depth still nests 3 deep
    with trio.fail_after(10):
        await _tree(small, 1, 0, 1, 3, 1.0)
