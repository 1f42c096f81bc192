"""One clock suite, every clock provider: the real clock and the fake one."""

from __future__ import annotations

import pytest
import trio

from broker.providers.clock import Clock, FakeClock, RealClock


@pytest.fixture(params=["real", "fake"])
def clock(request: pytest.FixtureRequest) -> Clock:
    return RealClock() if request.param == "real" else FakeClock()


async def _advance(clock: Clock, seconds: float) -> None:
    if isinstance(clock, FakeClock):
        await trio.sleep(0.01)
        clock.advance(seconds)


async def test_now_and_sleep(clock: Clock) -> None:
    start = clock.now()
    assert isinstance(start, float) and start > 1e9
    with trio.fail_after(2):
        await clock.sleep(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(clock.sleep, 0.05)
            nursery.start_soon(_advance, clock, 0.05)
    assert clock.now() - start >= 0.049  # (floating point)
