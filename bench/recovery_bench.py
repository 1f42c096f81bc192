"""Checkpoints and recovery: what durability costs.

* checkpoint size and time per step for a process with a long planner history (1,000 steps),
  beside a naive checkpoint that re-serialises the whole history every step;
* recovery time after a SIGKILL of a broker running 100 processes;
* one audited syscall with durability "off", "normal" (the default) and "full" (an fsync per
  commit), in the same run.

`python -m bench.recovery_bench [--crash-runs N]` (the crash harness, N SIGKILLs, as a long
run beside the test suite's 50).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

from broker import AgentImage, CallTool, Kernel, ScriptedPlanner
from broker.kernel.recovery import observation_to_json

ROOT = Path(__file__).resolve().parent.parent
STEPS = 1000


async def _checkpoints(root: Path) -> dict[str, Any]:
    async with Kernel.open(root / "cp.db") as kernel:
        await kernel.register_image(AgentImage("b", tools=("now",), needs=("clock:*:read",)))
        pid = kernel.spawn("b", caps=["clock:*:read"],
                           planner=ScriptedPlanner([CallTool("now", {})] * STEPS))
        start = time.perf_counter()
        await kernel.wait(pid)
        per_step_us = (time.perf_counter() - start) / STEPS * 1e6
        proc = kernel.process(pid)
        checkpoint = kernel.store.checkpoint(pid)
        size = len(json.dumps(checkpoint["state"]))
        history = [observation_to_json(o) for o in proc.history]
        saves = 200
        start = time.perf_counter()
        for _ in range(saves):
            kernel.store.save_checkpoint(pid, STEPS, checkpoint["state"], history[-1])
        save_us = (time.perf_counter() - start) / saves * 1e6
        start = time.perf_counter()
        for _ in range(saves):
            kernel.store.save_checkpoint(pid, STEPS, {**checkpoint["state"], "history": history})
        naive_us = (time.perf_counter() - start) / saves * 1e6
        naive_size = len(json.dumps(history))
    return {
        "steps": STEPS,
        "step_us_with_checkpoints": round(per_step_us, 1),
        "checkpoint_bytes_at_1000_steps": size,
        "checkpoint_save_us": round(save_us, 1),
        "naive_full_history_bytes": naive_size,
        "naive_full_history_save_us": round(naive_us, 1),
        "naive_over_incremental": round(naive_us / save_us, 1),
    }


AGENT = """
import sys, trio, trio.testing
from broker import AgentImage, Kernel
async def main(db):
    async with Kernel.open(db) as kernel:
        await kernel.register_image(AgentImage("w", tools=("sleep",), needs=("clock:*:sleep",),
            planner={"kind": "scripted", "actions": [{"tool": "sleep", "args": {"seconds": 60}}]}))
        for _ in range(100):
            kernel.spawn("w", caps=["clock:*:sleep"])
        await trio.testing.wait_all_tasks_blocked()
        print("READY", flush=True)
        await trio.sleep_forever()
trio.run(main, sys.argv[1])
"""


async def _recovery(root: Path) -> dict[str, Any]:
    db = root / "rec.db"
    broker = subprocess.Popen([sys.executable, "-c", AGENT, str(db)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert broker.stdout is not None
    assert broker.stdout.readline().strip() == "READY"
    broker.send_signal(signal.SIGKILL)
    broker.wait()
    start = time.perf_counter()
    async with Kernel.open(db) as kernel:
        opened = time.perf_counter() - start
        await trio.testing.wait_all_tasks_blocked()
        running = time.perf_counter() - start
        waiting = sum(1 for p in kernel.ps() if p["state"] == "waiting")
        unknown = sum(1 for r in kernel.audit() if r["detail"].get("unknown"))
    return {"processes": 100, "recovery_open_ms": round(opened * 1e3, 1),
            "recovery_until_all_waiting_again_ms": round(running * 1e3, 1),
            "waiting_again": waiting, "outcomes_marked_unknown": unknown}


async def audited_syscall_by_durability(root: Path, n: int = 3000) -> dict[str, Any]:
    """µs of one audited `clock.now` at each durability (`full` runs a tenth as many), the
    three stores open at once and measured in turns, a batch each, so that load from
    elsewhere falls on each alike; the median batch of each."""
    modes = ("off", "normal", "full")
    batches: dict[str, list[float]] = {mode: [] for mode in modes}
    async with contextlib.AsyncExitStack() as stack:
        procs = {}
        for mode in modes:
            kernel = await stack.enter_async_context(
                Kernel.open(root / f"d-{mode}.db", durability=mode))
            await kernel.register_image(AgentImage("b", tools=("now",),
                                                   needs=("clock:*:read",)))
            procs[mode] = (kernel, kernel.process(kernel.spawn("b", caps=["clock:*:read"])))
        rounds = 10
        for _ in range(rounds):
            for mode in modes:
                kernel, proc = procs[mode]
                runs = max(1, n // (10 * rounds)) if mode == "full" else max(1, n // rounds)
                start = time.perf_counter()
                for _ in range(runs):
                    kernel.dispatcher.run_now(proc, None, "clock.now", {})
                batches[mode].append((time.perf_counter() - start) / runs * 1e6)
    out: dict[str, Any] = {f"audited_syscall_us_{mode}": round(statistics.median(batches[mode]),
                                                               1) for mode in modes}
    out["normal_over_off"] = round(out["audited_syscall_us_normal"] /
                                   out["audited_syscall_us_off"], 2)
    out["full_over_normal"] = round(out["audited_syscall_us_full"] /
                                    out["audited_syscall_us_normal"], 1)
    return out


def long_crash_run(runs: int) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         "tests/broker/kernel/test_crash.py"], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "LIBOS_CRASH_RUNS": str(runs)})
    figures = next((json.loads(line) for line in done.stdout.splitlines()
                    if line.startswith("{")), {})
    return {"passed": done.returncode == 0, "seconds": round(time.perf_counter() - start, 1),
            **figures}


def run(crash_runs: int = 0) -> dict[str, Any]:
    async def main(root: Path) -> dict[str, Any]:
        return {"checkpoints": await _checkpoints(root), "recovery": await _recovery(root),
                "durability": await audited_syscall_by_durability(root)}

    with tempfile.TemporaryDirectory(prefix="libos-bench-") as tmp:
        results = trio.run(main, Path(tmp))
    if crash_runs:
        results["crash_harness"] = long_crash_run(crash_runs)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--crash-runs", type=int, default=0)
    print(json.dumps(run(parser.parse_args().crash_runs), indent=2))
