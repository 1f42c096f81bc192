"""A real broker whose memory the harness measures: `python -m tests.broker.kernel.memory_agent
run DB STEPS MIB` runs a process that reads a MIB-MiB file STEPS times and prints `RSS <steps>
<KiB>` after 10 steps and after STEPS (then leaves it paused, live, in the store);
`... open DB PID` opens a store, looks the process up (recovering it, reading its last step)
and prints `RSS open <KiB>`.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import trio

from broker import AgentImage, CallTool, Kernel, ScriptedPlanner


def rss_kib() -> int:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def run(db: Path, steps: int, mib: int) -> None:
    async with Kernel.open(db) as kernel:
        (Path(kernel.fs.root) / "big.txt").write_text("a" * (mib << 20))  # type: ignore[attr-defined]
        await kernel.register_image(AgentImage("reader", tools=("read_file",),
                                               needs=("fs:/**:read",)))
        read = CallTool("read_file", {"path": "/big.txt"})
        pid = kernel.spawn("reader", caps=["fs:/**:read"],
                           planner=ScriptedPlanner(lambda history: read))
        proc = kernel.process(pid)
        for mark in (10, steps):
            while len(proc.history) < mark:
                await trio.sleep(0.005)
            if mark == steps:
                kernel.pause(pid)
            print(f"RSS {mark} {rss_kib()}", flush=True)
        while proc.state.value != "paused":
            await trio.sleep(0.005)
        print(f"PID {pid}", flush=True)


async def open_(db: Path, pid: int) -> None:
    async with Kernel.open(db) as kernel:
        if pid:
            proc = kernel.process(pid)
            assert proc.state.value == "paused" and len(proc.history) > 0
            assert proc.history[-1].action.name == "read_file"
        print(f"RSS open {rss_kib()}", flush=True)


if __name__ == "__main__":
    mode, db = sys.argv[1], Path(sys.argv[2])
    if mode == "run":
        trio.run(run, db, int(sys.argv[3]), int(sys.argv[4]))
    else:
        trio.run(open_, db, int(sys.argv[3]))
