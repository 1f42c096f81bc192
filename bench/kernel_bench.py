"""Kernel benchmark: what an audited syscall costs, and how the scheduler scales.

* one `fs.read` of a small file through the dispatcher (validate + check + durable audit
  intent + act + audit outcome), beside a direct Python read of the same file;
* audited syscalls per second with 1 and with 100 concurrent processes;
* scheduler steps per second with 100 processes under scripted planners.

Run with `python -m bench.kernel_bench` (or `python -m bench` for everything).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.timing import best_us
from broker import AgentImage, CallTool, Kernel, ScriptedPlanner

CONTENT = "a small file\n" * 8


async def scheduler_steps_per_s(kernel: Kernel, image: str, processes: int,
                                steps: int) -> float:
    """Steps per second of `processes` processes under scripted planners, each calling the
    builtin `now` (needs `clock:*:read` in `image`) `steps` times: a step is the planner, the
    tool call, its syscall and the checkpoints."""
    pids = [kernel.spawn(image, caps=["clock:*:read"], planner=ScriptedPlanner(
        [CallTool("now", {})] * steps)) for _ in range(processes)]
    start = time.perf_counter()
    for p in pids:
        await kernel.wait(p)
    return processes * steps / (time.perf_counter() - start)


async def _measure(root: Path, n_calls: int, steps: int) -> dict[str, Any]:
    async with Kernel.open(root / "bench.db") as kernel:
        await kernel.register_image(AgentImage(
            "bench", tools=("read_file", "now"), needs=("fs:/**:read,write", "clock:*:read")))
        pid = kernel.spawn("bench", caps=["fs:/data/**:read", "clock:*:read"])
        host_file = Path(kernel.fs.root, "data", "small.txt")  # type: ignore[attr-defined]
        host_file.parent.mkdir()
        host_file.write_text(CONTENT)
        proc = kernel.process(pid)
        args = {"path": "/data/small.txt"}
        run_now = kernel.dispatcher.run_now

        def direct() -> None:
            with open(host_file) as f:
                f.read()

        audited_us = best_us(lambda: run_now(proc, None, "fs.read", args), n_calls)
        direct_us = best_us(direct, n_calls)

        async def worker(p: Any, count: int) -> None:
            for _ in range(count):
                await kernel.dispatcher.run(p, None, "fs.read", args)

        rates = {}
        for concurrency in (1, 100):
            procs = [kernel.process(kernel.spawn("bench", caps=["fs:/data/**:read"]))
                     for _ in range(concurrency)]
            per = max(1, n_calls // concurrency)
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for p in procs:
                    nursery.start_soon(worker, p, per)
            rates[concurrency] = per * concurrency / (time.perf_counter() - start)

        steps_per_s = await scheduler_steps_per_s(kernel, "bench", 100, steps)

    return {
        "audited_fs_read_us": round(audited_us, 1),
        "direct_python_read_us": round(direct_us, 1),
        "audited_over_direct": round(audited_us / direct_us, 1),
        "syscalls_per_s_1_proc": round(rates[1]),
        "syscalls_per_s_100_procs": round(rates[100]),
        "scheduler_steps_per_s_100_procs": round(steps_per_s),
    }


def run(n_calls: int = 2000, steps: int = 20) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="libos-bench-") as tmp:
        return trio.run(_measure, Path(tmp), n_calls, steps)


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:36} {value}")
