"""Timing helpers shared by the benchmarks: best of several repeats after a warm-up, in µs
per call. The best run is the one least disturbed by the other work on a shared machine."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

WARMUP = 50


def best_us(fn: Callable[[], Any], number: int, repeat: int = 5,
            warmup: int = WARMUP) -> float:
    for _ in range(min(number, warmup)):
        fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / number * 1e6


async def best_async_us(fn: Callable[[], Awaitable[Any]], number: int,
                        repeat: int = 5, warmup: int = WARMUP) -> float:
    for _ in range(min(number, warmup)):
        await fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            await fn()
        best = min(best, time.perf_counter() - start)
    return best / number * 1e6


async def kernel_cold_call_us(sandbox: Any, lang: str, source: str, db: Path,
                              runs: int) -> float:
    """Median µs of a tool's first call in a new process (a new authority, so a sandbox
    without spares has to start one), through the whole kernel."""
    from broker import AgentImage, Kernel

    async with Kernel.open(db, sandboxes=[sandbox]) as kernel:
        await kernel.register_image(AgentImage(
            "bench", tools=("register_tool",), needs=("tool:*:register,call",)))
        samples = []
        for _ in range(runs):
            pid = kernel.spawn("bench", caps=[f"tool:{lang}:register"])
            await kernel.call_tool(pid, "register_tool", {
                "name": "noop", "lang": lang, "source": source})
            start = time.perf_counter()
            await kernel.call_tool(pid, "noop", {})
            samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def own_home(prefix: str) -> Path:
    """A temporary directory that HOME and the XDG directories point into (a throwaway key
    directory, never the user's), for a bench that opens stores and signs."""
    import os
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    for name in ("HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
        os.environ[name] = str(tmp / name.lower())
    return tmp


def print_on_off(times: dict[str, list[float]]) -> None:
    """An on/off A/B's times (seconds): each side's median and quartiles, in µs, and the
    difference of the medians."""
    for side in ("off", "on"):
        v = sorted(times[side])
        print(f"{side}: n={len(v)} median {statistics.median(v) * 1e6:.0f} µs, p25"
              f" {v[len(v) // 4] * 1e6:.0f}, p75 {v[3 * len(v) // 4] * 1e6:.0f}")
    delta = statistics.median(times["on"]) - statistics.median(times["off"])
    print(f"on - off (medians): {delta * 1e6:.0f} µs")
