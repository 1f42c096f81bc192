"""Instructions per scheduler step, kernel-only, under callgrind: `processes` processes under
scripted planners, each calling the builtin `now` `steps` times (as `kernel_bench`'s
steps per second measures: from their spawn to the last one's end). Only that is counted.

    python -m bench.steps_callgrind                       # 100 processes x 20 steps
    python -m bench.steps_callgrind 100 20 --keep cg.out   # and keep the loop's profile
    python -m bench.steps_callgrind --loop 100 20          # the loop alone (what valgrind runs)
    python -m bench.steps_callgrind 1 300 --still          # the kernel's timers held still

`--still`: valgrind runs the broker about 50 times slower, so the kernel's timers (the
anchor's signature every 50 ms, the group commit's 5 ms window, the approval, control and
event pollers) fire about 50 times more often per step than at full speed, and more on a
loaded machine: with one process they were half the count. `--still` runs the loop on a
trio clock that does not move (`MockClock(rate=0)`): no timer fires, the count is the steps'
own work (what full speed sees, give or take under 1%) and repeatable.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import trio
from trio.testing import MockClock

from bench.callgrind import instructions as profiled
from broker import AgentImage, CallTool, Kernel, ScriptedPlanner

WARM_STEPS = 5  # a first round of the same processes, before the marks


async def loop(processes: int, steps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="libos-cg-") as tmp:
        async with Kernel.open(Path(tmp) / "k.db") as kernel:
            await kernel.register_image(AgentImage("b", tools=("now",),
                                                   needs=("clock:*:read",)))
            for count, marked in ((WARM_STEPS, False), (steps, True)):
                pids = [kernel.spawn("b", caps=["clock:*:read"], planner=ScriptedPlanner(
                    [CallTool("now", {})] * count)) for _ in range(processes)]
                if marked:
                    os.getppid()  # the mark before the loop
                for pid in pids:
                    await kernel.wait(pid)
            os.getppid()  # and after it


def instructions(processes: int = 100, steps: int = 20, keep: Path | None = None,
                 still: bool = False) -> int:
    """Instructions per step of the loop alone (`still`: the kernel's timers held still)."""
    return profiled("bench.steps_callgrind",
                    ["--loop", str(processes), str(steps), *(["--still"] if still else [])],
                    per=processes * steps, keep=keep)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--loop"]:
        clock = MockClock(rate=0) if "--still" in sys.argv else None
        trio.run(loop, int(sys.argv[2]), int(sys.argv[3]), clock=clock)
    else:
        argv = sys.argv[1:]
        keep = Path(argv[argv.index("--keep") + 1]) if "--keep" in argv else None
        numbers = [int(a) for a in argv[:2] if a.isdigit()] or [100, 20]
        n = instructions(*numbers, keep=keep, still="--still" in argv)
        print(f"{n:>9,} instructions per step ({numbers[0]} processes x {numbers[1]} steps"
              f"{', timers still' if '--still' in argv else ''})")
