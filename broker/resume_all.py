"""`libos resume --all`: be the broker. Opening the kernel recovers every process that was
running and starts each from its last checkpoint; this says which it resumed, says when one
waits for a person, and how each ended, as it ends (or that it still runs when `--for` is
up). On a terminal a status line counts those still running; a pipe gets only the lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.text import Text

from broker.kernel import Kernel
from broker.progress import Progress
from broker.render import inert, libos_command
from broker.waits import WaitNotices

POLL_SECONDS = 0.1
RESULT_CELL = 200


def _label(proc: Any) -> str:
    return f"{proc.pid} {proc.image.name}:{proc.image.version}"


def _how(proc: Any, db_shown: str | None) -> str:
    if proc.planner is None:
        return "no planner: its host drives it, nothing runs it here"
    if proc.state.value == "paused":
        return f"paused: {libos_command(db_shown, 'resume', str(proc.pid))} lets it go on"
    return f"from step {len(proc.history)}"


def _ended(status: dict[str, Any], label: str) -> Text:
    line = Text(f"process {label} {status['state']}")
    if status["reason"]:
        line.append(" (")
        line.append(inert(status["reason"], RESULT_CELL))
        line.append(")")
    if status["result"] is not None:
        line.append(": ")
        line.append(inert(status["result"], RESULT_CELL))
    return line


async def resume_all(store: str | Path, seconds: float, console: Console, *, quiet: bool,
                     db_shown: str | None) -> dict[str, Any]:
    """Run the store's processes until every resumed one has ended (or `seconds`, if not 0).
    `quiet`: print nothing on stdout (the caller prints JSON); notices then go to stderr."""
    lines = Console(stderr=True, highlight=False) if quiet else console
    async with Kernel.open(store) as kernel:
        procs = [kernel.process(pid) for pid in kernel.live]
        driven = [p for p in procs if p.planner is not None]
        if not procs:
            lines.print("nothing to resume: no process was running")
        else:
            lines.print(f"resumed {len(procs)} process{'es' if len(procs) > 1 else ''}:")
        for proc in procs:
            lines.print(Text(f"  {_label(proc)} ({_how(proc, db_shown)})"))
        finals: dict[int, dict[str, Any]] = {}
        notices = WaitNotices(db_shown)
        with Progress(lines) as progress, trio.move_on_after(seconds or float("inf")):
            async with trio.open_nursery() as nursery:
                async def wait(proc: Any) -> None:
                    finals[proc.pid] = status = await kernel.wait(proc.pid)
                    lines.print(_ended(status, _label(proc)))

                for proc in driven:
                    nursery.start_soon(wait, proc)
                while len(finals) < len(driven):
                    progress.update(f"{len(driven) - len(finals)} of {len(driven)} still "
                                    "running (Ctrl-C stops; the next broker resumes them)")
                    for notice in notices.new(kernel.approvals()):
                        lines.print(notice, soft_wrap=True)  # a command is never cut in two
                    await trio.sleep(POLL_SECONDS)
        still = [p for p in driven if p.pid not in finals]
        if still:
            lines.print(f"still running after {seconds:g} s (the next broker resumes "
                        f"{'them' if len(still) > 1 else 'it'}): "
                        + ", ".join(_label(p) for p in still))
        return {"resumed": [p.pid for p in procs],
                "processes": [{**kernel.status(p), "image": p.image.name,
                               "version": p.image.version} for p in procs]}
