"""Clocks: the real one, and a fake one that tests and replays move by hand."""

from __future__ import annotations

import time
from typing import Protocol

import trio


class Clock(Protocol):
    def now(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class FakeClock:
    """Time stands still until `advance` moves it; sleepers wake when their time comes."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._changed = trio.Event()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._changed.set()
        self._changed = trio.Event()

    async def sleep(self, seconds: float) -> None:
        wake = self._now + seconds
        while self._now < wake:
            await self._changed.wait()
