"""Where a Python (or TypeScript) tool's registration and first call spend their time (issue
#17): the broker's side and the Deno process's, each step apart, with a warm spare as the
report's `register.python` (`register.ts`) has it (a new process registers a new tool, then
calls it).

For each step, medians and quartiles (microseconds) of the wall time, the broker's CPU (its
trio thread), and the CPU of the Deno process that checks and runs the tool, all its threads
and its main thread alone, read from /proc/PID/task/*/schedstat (nanoseconds: /proc/PID/stat
counts in ticks of 10 ms). valgrind follows no child, so the kernel's instructions
(`python -m bench.readpath_callgrind py_register`) leave the Deno side out; this counts it.
CPU time stays close on a loaded machine where wall time does not: compare two trees with
runs alternated back to back.

    python -m bench.pyodide_register [ROUNDS]      # prints JSON
    python -m bench.pyodide_register [ROUNDS] ts   # the same for a TypeScript tool (`register.ts`)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.report.measure import SPARE_SETTLE


def cpu_us(pid: int) -> tuple[float, float]:
    """CPU time (µs) of a process so far: all its threads, and its main thread."""
    total = main = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that has just exited
        total += ns
        if task == str(pid):
            main = ns
    return total / 1000, main / 1000


def _quartiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else ordered * 3
    return {"median": round(statistics.median(ordered)), "q1": round(q[0]), "q3": round(q[2])}


# A new tool's source in each language: what the report's `register` cases register.
SOURCES = {"python": "def run(args, libos):\n    return {i}\n",
           "ts": "export default async function run() {{ return {i}; }}"}


async def _main(rounds: int, lang: str = "python") -> dict[str, Any]:
    from broker import AgentImage, Kernel
    from sandboxes.deno import DenoSandbox
    from sandboxes.pyodide import PyodideSandbox

    found: dict[str, list[float]] = {}
    driver = PyodideSandbox if lang == "python" else DenoSandbox
    with tempfile.TemporaryDirectory(prefix="libos-bench-pyreg-") as tmp:
        async with driver(spares=1) as sandbox, Kernel.open(
                Path(tmp) / "k.db", sandboxes=[sandbox]) as kernel:
            await kernel.register_image(AgentImage(
                "bench", tools=("register_tool",), needs=("tool:*:register,call",)))
            for i in range(rounds + 1):  # the first round warms the broker's own paths
                await sandbox.warm()
                await trio.sleep(SPARE_SETTLE)  # a spare a broker keeps has been idle a while
                pid = kernel.spawn("bench", caps=[f"tool:{lang}:register"])
                deno = sandbox.pool.ready[0].process.pid  # the spare the registration takes
                marks = [(time.perf_counter_ns() / 1000, time.thread_time_ns() / 1000,
                          cpu_us(deno))]
                await kernel.call_tool(pid, "register_tool", {
                    "name": f"jit{i}", "lang": lang, "source": SOURCES[lang].format(i=i)})
                marks.append((time.perf_counter_ns() / 1000, time.thread_time_ns() / 1000,
                              cpu_us(deno)))
                await kernel.call_tool(pid, f"jit{i}", {})
                marks.append((time.perf_counter_ns() / 1000, time.thread_time_ns() / 1000,
                              cpu_us(deno)))
                if i == 0:
                    continue
                for step, (a, b) in (("register", (0, 1)), ("first_call", (1, 2)),
                                     ("both", (0, 2))):
                    (wall0, broker0, deno0), (wall1, broker1, deno1) = marks[a], marks[b]
                    for what, value in (("wall", wall1 - wall0), ("broker", broker1 - broker0),
                                        ("deno", deno1[0] - deno0[0]),
                                        ("deno_main", deno1[1] - deno0[1])):
                        found.setdefault(f"{step}.{what}", []).append(value)
    return {"unit": "microseconds", "rounds": rounds,
            "figures": {key: _quartiles(values) for key, values in found.items()},
            "raw": {key: [round(v) for v in values] for key, values in found.items()}}


def run(rounds: int = 20, lang: str = "python") -> dict[str, Any]:
    from sandboxes.pyodide import pyodide_available

    if lang not in SOURCES:
        raise SystemExit(f"no such language {lang!r}: one of {sorted(SOURCES)}")
    if lang == "python" and not pyodide_available():
        return {"skipped": "Pyodide is not installed: run `libos setup`"}
    return trio.run(_main, rounds, lang)


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20,
                         sys.argv[2] if len(sys.argv) > 2 else "python"), indent=1))
