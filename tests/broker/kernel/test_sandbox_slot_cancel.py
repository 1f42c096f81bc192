"""A sandbox slot (`Bounds.sandbox`: taken at once without an async generator when free, else
waited for) is never leaked or used twice, whoever is cancelled when: a holder cancelled in its
block, a waiter cancelled while waiting, a waiter cancelled in the very tick its slot is handed
over, a waiter whose deadline passes. After each, the counts are back to zero and the slot
serves the next caller."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from broker.errors import LimitExceeded
from broker.kernel.bounds import Bounds, ProcessLimits


@dataclass
class _Limits:
    deadline: float = 30.0


@dataclass
class _Inv:  # the fields `Bounds.sandbox` reads of an Invocation
    pid: int = 1
    depth: int = 0
    limits: _Limits = field(default_factory=_Limits)
    started: float = field(default_factory=time.monotonic)


def _bounds() -> Bounds:
    return Bounds(ProcessLimits(sandboxes=1, broker_sandboxes=1), tool_depth=1, deadline=30.0)


def _clear(bounds: Bounds) -> None:
    slots = bounds.sandboxes
    assert slots.held() == 0 and slots.held(1) == 0 and not slots._waiting


async def _one_more_call_works(bounds: Bounds) -> None:
    async with bounds.sandbox(_Inv()):
        assert bounds.sandboxes.held(1) == 1
    _clear(bounds)


async def test_a_holder_cancelled_in_its_block_gives_its_slot_back() -> None:
    bounds = _bounds()
    with trio.move_on_after(0.01):
        async with bounds.sandbox(_Inv()):
            await trio.sleep_forever()
    _clear(bounds)
    await _one_more_call_works(bounds)


async def test_a_holder_that_raises_gives_its_slot_back() -> None:
    bounds = _bounds()
    with pytest.raises(KeyError):
        async with bounds.sandbox(_Inv()):
            raise KeyError("x")
    _clear(bounds)
    await _one_more_call_works(bounds)


async def test_a_waiter_cancelled_while_waiting_takes_nothing() -> None:
    bounds = _bounds()
    entered = []
    async with trio.open_nursery() as nursery, bounds.sandbox(_Inv()):
        cancel = trio.CancelScope()

        async def wait() -> None:
            with cancel:
                async with bounds.sandbox(_Inv()):
                    entered.append(1)

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert len(bounds.sandboxes._waiting) == 1
        cancel.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert not bounds.sandboxes._waiting and bounds.sandboxes.held(1) == 1
    assert entered == []
    _clear(bounds)
    await _one_more_call_works(bounds)


async def test_a_waiter_cancelled_as_its_slot_is_handed_over_gives_it_back() -> None:
    bounds = _bounds()
    entered = []
    cancel = trio.CancelScope()

    async def wait() -> None:
        with cancel:
            async with bounds.sandbox(_Inv()):
                entered.append(1)
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        async with bounds.sandbox(_Inv()):
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
        # the holder left: the slot was handed to the waiter (granted), which has not run yet
        assert bounds.sandboxes.held(1) == 1 and not bounds.sandboxes._waiting
        cancel.cancel()
    assert entered in ([], [1])  # (granted before the cancel: it may enter, then leaves)
    _clear(bounds)
    await _one_more_call_works(bounds)


async def test_a_waiter_past_its_deadline_fails_typed_and_takes_nothing() -> None:
    bounds = _bounds()
    async with bounds.sandbox(_Inv()):
        with pytest.raises(LimitExceeded):
            async with bounds.sandbox(_Inv(limits=_Limits(deadline=0.05))):
                raise AssertionError("entered a slot that was held")
        assert bounds.sandboxes.held(1) == 1
    _clear(bounds)
    await _one_more_call_works(bounds)


async def test_many_callers_cancelled_at_random_leave_nothing_held() -> None:
    bounds = Bounds(ProcessLimits(sandboxes=3, broker_sandboxes=3), tool_depth=1,
                    deadline=30.0)
    inside = 0
    most = 0

    async def call(i: int) -> None:
        nonlocal inside, most
        with trio.move_on_after((i % 7) * 0.002):
            async with bounds.sandbox(_Inv()):
                inside += 1
                most = max(most, inside)
                try:
                    await trio.sleep((i % 5) * 0.001)
                finally:
                    inside -= 1

    async with trio.open_nursery() as nursery:
        for i in range(300):
            nursery.start_soon(call, i)
    assert most <= 3  # never more holders than slots
    _clear(bounds)
    await _one_more_call_works(bounds)
