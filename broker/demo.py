"""`libos demo`: the whole story, deterministic and in seconds.

Act 1. A `lead` agent registers three tools while it runs — TypeScript (Deno), WebAssembly
(Wasmtime) and, where Pyodide is installed, Python — and uses them. A tool that tries to
escape its sandbox gets nothing. The lead spawns an `analyst` with a narrower grant: it is
denied a secret, asks a person before writing a report, gets a one-shot approval (from the
demo's scripted human), and is refused when it tries to reuse it.

Act 2. A `night-shift` agent works through a job in a broker process of its own; that broker
is killed with SIGKILL while the agent waits for a signal.

Act 3. A new broker opens the store: the agent resumes from its last checkpoint, nothing it
did is repeated, it finishes. Then labels: a `courier` reads the secret through a capability
that labels it `secret`; copying it to `/exports` is refused (that capability bounds the
labels flowing in), and a digest for `/reviewed` goes out only because a person approves that
one call. The audit chain verifies.

This module starts it: the sandboxes' spares (Pyodide's start from its snapshot is the
longest wait) and act 2's broker process first, so they start while the story itself
(`broker/demo_story.py`, which imports the kernel) is imported and act 1 begins.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from sandboxes.available import open_sandboxes

NIGHT_SHIFT_BROKER = """
import os
# Started while act 1 runs, so its imports are done by then, at a lower priority: act 1 (and
# the Pyodide sandbox's start) comes first when they compete for the CPU. It opens the store
# (which act 1's broker holds) when it is told to go, or exits if the demo ends first.
os.nice(10)
import sys, trio
from broker.kernel import Kernel
if sys.stdin.readline() != "go\\n":
    sys.exit(0)
async def main(db):
    async with Kernel.open(db) as kernel:
        pid = kernel.spawn("night-shift", caps=["fs:/shift/**:write", "proc:event:dawn:message"])
        while kernel.process(pid).state.value != "waiting":
            await trio.sleep(0.01)
        print("WAITING", pid, flush=True)
        await trio.sleep_forever()
trio.run(main, sys.argv[1])
"""


def start_night_shift(db: Path) -> subprocess.Popen[str]:
    """Act 2's broker process, started ahead: it waits to be told to go (`act_two`)."""
    return subprocess.Popen([sys.executable, "-c", NIGHT_SHIFT_BROKER, str(db)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)


async def run_demo(db: Path, out: Console) -> bool:
    """Run the demo against a fresh store at `db`. Returns whether the audit verified."""
    night_shift = start_night_shift(db)  # its interpreter starts while act 1 runs
    try:
        # One spare of each kind, started now, and none after: the lead checks and runs its
        # tools in them; a replacement would only compete with the story for the CPU.
        async with open_sandboxes(db.parent, refill=False) as sandboxes:
            from broker import demo_story as story  # the kernel, while the spares start

            t = story.Transcript(out)
            await story.act_one(db, sandboxes, t)
            # Act 2 uses no sandbox: it starts now (in a thread: it waits on a pipe), while
            # they are closed (their processes killed and reaped), which takes a while.
            act_two = concurrent.futures.Future[int]()
            threading.Thread(target=_run_into, args=(act_two, story.act_two, db, night_shift,
                                                     t), daemon=True).start()
        pid = await trio.to_thread.run_sync(act_two.result)
    finally:
        if night_shift.poll() is None:  # act 1 failed: it never went
            night_shift.kill()
        night_shift.wait()
        for pipe in (night_shift.stdin, night_shift.stdout):
            if pipe is not None:
                pipe.close()
    return await story.act_three(db, pid, t)


def _run_into(future: concurrent.futures.Future[Any], fn: Callable[..., Any],
              *args: Any) -> None:
    """`fn(*args)`, its result or its exception set on `future`."""
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # raised again by whoever waits on it
        future.set_exception(exc)
