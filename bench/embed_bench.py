"""Embedding benchmark: what the kernel's thread costs a program that does not run trio.

One kernel in a `KernelThread`; one `call_tool` of the builtin `read_file` (a small file:
checked, audited, read) measured, in the same run:

* directly in trio, in the kernel's own thread (the baseline);
* through the blocking front, from plain code (`kernel.call_tool`);
* through the asyncio front (`await kernel.acall_tool`: the outcome comes back to the event
  loop with `call_soon_threadsafe`), and, for comparison, a blocking call in asyncio's thread
  pool (`asyncio.to_thread`), which the front does not use;
* the bare hop (a call that does nothing in the kernel's thread) each way, beside
  `trio.from_thread.run_sync` into an idle trio thread.

The ways take turns, a round of calls each, and each figure is the median µs of one call
over every round: on a shared machine, load that comes and goes then weighs on all of them
alike. Run with `python -m bench.embed_bench` (or `python -m bench` for everything).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from broker import AgentImage, Kernel, KernelThread

ARGS = {"path": "/data/small.txt"}


def noop(kernel: Kernel) -> None:
    return None


def _samples(fn: Callable[[], Any], number: int) -> list[float]:
    out = []
    for _ in range(number):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


async def _async_samples(fn: Callable[[], Awaitable[Any]], number: int) -> list[float]:
    out = []
    for _ in range(number):
        start = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - start)
    return out


class _TrioThread:
    """An idle trio run in a thread: trio's own way in (`from_thread.run_sync`), for scale."""

    def __enter__(self) -> trio.lowlevel.TrioToken:
        ready = threading.Event()
        self._stop = trio.Event()

        async def serve() -> None:
            self.token = trio.lowlevel.current_trio_token()
            ready.set()
            await self._stop.wait()

        self._thread = threading.Thread(target=trio.run, args=(serve,))
        self._thread.start()
        ready.wait()
        return self.token

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join()


def _measure(root: Path, per_round: int, rounds: int) -> dict[str, Any]:
    (root / "bench-fs" / "data").mkdir(parents=True)
    (root / "bench-fs" / "data" / "small.txt").write_text("a small file\n" * 8)
    times: dict[str, list[float]] = {}

    def add(way: str, samples: list[float]) -> None:
        times.setdefault(way, []).extend(samples)

    with KernelThread(root / "bench.db") as kernel, _TrioThread() as idle:
        kernel.register_image(AgentImage("bench", tools=("read_file",),
                                         needs=("fs:/data/**:read",)))
        pid = kernel.spawn("bench", caps=["fs:/data/**:read"])

        async def direct(k: Kernel) -> list[float]:
            return await _async_samples(lambda: k.call_tool(pid, "read_file", ARGS), per_round)

        async def in_asyncio() -> None:
            add("asyncio", await _async_samples(
                lambda: kernel.acall_tool(pid, "read_file", ARGS), per_round))
            add("to_thread", await _async_samples(
                lambda: asyncio.to_thread(kernel.call_tool, pid, "read_file", ARGS),
                per_round))
            add("hop_asyncio", await _async_samples(
                lambda: kernel.arun_in_kernel(noop), per_round))
            add("hop_to_thread", await _async_samples(
                lambda: asyncio.to_thread(kernel.run_in_kernel, noop), per_round))

        for _ in range(rounds + 1):  # the first round warms up and is dropped below
            add("direct", kernel.run_in_kernel(direct))
            add("blocking", _samples(lambda: kernel.call_tool(pid, "read_file", ARGS),
                                     per_round))
            asyncio.run(in_asyncio())
            add("hop_blocking", _samples(lambda: kernel.run_in_kernel(noop), per_round))
            add("hop_from_thread", _samples(
                lambda: trio.from_thread.run_sync(lambda: None, trio_token=idle), per_round))
    us = {way: statistics.median(samples[per_round:]) * 1e6 for way, samples in times.items()}
    return {
        "call_tool_direct_in_trio_us": round(us["direct"], 1),
        "call_tool_blocking_front_us": round(us["blocking"], 1),
        "call_tool_asyncio_front_us": round(us["asyncio"], 1),
        "call_tool_asyncio_to_thread_us": round(us["to_thread"], 1),
        "blocking_over_direct": round(us["blocking"] / us["direct"], 2),
        "asyncio_over_direct": round(us["asyncio"] / us["direct"], 2),
        "to_thread_over_direct": round(us["to_thread"] / us["direct"], 2),
        "hop_blocking_us": round(us["hop_blocking"], 1),
        "hop_asyncio_us": round(us["hop_asyncio"], 1),
        "hop_asyncio_to_thread_us": round(us["hop_to_thread"], 1),
        "hop_trio_from_thread_us": round(us["hop_from_thread"], 1),
    }


def run(per_round: int = 200, rounds: int = 8) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="libos-bench-") as tmp:
        return _measure(Path(tmp), per_round, rounds)


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:34} {value}")
