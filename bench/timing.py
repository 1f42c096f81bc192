"""Timing helpers shared by the benchmarks: best of several repeats after a warm-up, in µs
per call. The best run is the one least disturbed by the other work on a shared machine."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

WARMUP = 50


def best_us(fn: Callable[[], Any], number: int, repeat: int = 5) -> float:
    for _ in range(min(number, WARMUP)):
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / number * 1e6


async def best_async_us(fn: Callable[[], Awaitable[Any]], number: int,
                        repeat: int = 5) -> float:
    for _ in range(min(number, WARMUP)):
        await fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            await fn()
        best = min(best, time.perf_counter() - start)
    return best / number * 1e6
