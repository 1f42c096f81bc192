"""`libos run IMAGE --goal TEXT`: run one agent under its image's model planner and print
its transcript. Also the sandboxes and image loading that `libos mcp` shares."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from rich.text import Text

from broker.cli_errors import typed_errors
from broker.errors import InvalidArgument
from broker.kernel import AgentImage, Kernel
from broker.render import action_text, heading, inert
from broker.store.location import beside
from broker.waits import WaitNotices

TRANSCRIPT_CELL = 400
FOLLOW_SECONDS = 0.1


@contextlib.asynccontextmanager
async def open_sandboxes(db: str | Path) -> AsyncIterator[list[Any]]:
    """The sandboxes model-written tools run in (Deno, Wasmtime, Pyodide once `libos setup`
    has installed it), their caches beside the store; no spare sandboxes kept warm."""
    from sandboxes.available import open_sandboxes as open_available

    async with open_available(beside(db, "sandboxes"), spares=0) as found:
        yield found


def parse_caps(caps: list[str] | None) -> list[Any] | None:
    """`--caps` values: `kind:scope:rights`, or a JSON object (for an effect such as `ask`,
    uses or expiry)."""
    if caps is None:
        return None
    out: list[Any] = []
    for cap in caps:
        if cap.lstrip().startswith("{"):
            try:
                out.append(json.loads(cap))
            except ValueError as exc:
                raise InvalidArgument(f"--caps {cap!r}: not JSON: {exc}") from None
        else:
            out.append(cap)
    return out


async def load_image(kernel: Kernel, image: str) -> AgentImage:
    """IMAGE is the name of an image in the store, or a JSON file holding one (registered
    into the store first)."""
    path = Path(image)
    if image.endswith(".json") and path.is_file():
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InvalidArgument(f"{image}: not JSON: {exc}") from None
        return await kernel.register_image(spec)
    return kernel.image(image)


def transcript(planner: Any, history: Sequence[Any], pid: int, start: int = 0
               ) -> tuple[list[Text], int]:
    """Lines of a model planner's conversation from turn `start` (else of the process's
    steps from step `start`), every string inert; and where the next call should start."""
    turns = getattr(planner, "turns", None)  # a model planner's conversation
    if not isinstance(turns, list):
        lines = []
        for obs in history[start:]:
            line = Text(f"[{pid}] → ", style="cyan")
            line.append(inert(action_text(obs.action), TRANSCRIPT_CELL))
            line.append("\n    ← " if obs.ok else "\n    ✗ ", style="green" if obs.ok else "red")
            line.append(inert(obs.result if obs.ok else obs.error, TRANSCRIPT_CELL))
            lines.append(line)
        return lines, len(history)
    lines = []
    for turn in turns[start:]:
        if turn["role"] == "user":
            line = Text("goal: ", style="bold")
            line.append(inert(turn["text"], TRANSCRIPT_CELL))
            lines.append(line)
        elif turn["role"] == "assistant":
            if turn["text"]:
                line = Text("model: ", style="bold magenta")
                line.append(inert(turn["text"], TRANSCRIPT_CELL))
                lines.append(line)
            for call in turn["calls"]:
                line = Text("  → ", style="cyan")
                args = call["arguments"] if isinstance(call["arguments"], str) else json.dumps(
                    call["arguments"], ensure_ascii=False)
                line.append(inert(f"{call['name']}({args})", TRANSCRIPT_CELL))
                lines.append(line)
        else:
            line = Text("  ✗ " if turn["error"] else "  ← ",
                        style="red" if turn["error"] else "green")
            line.append(inert(turn["content"], TRANSCRIPT_CELL))
            lines.append(line)
    return lines, len(turns)


async def run_agent(db: str | Path, image: str, goal: str, caps: list[str] | None,
                    console: Console, *, timeout: float | None = None) -> dict[str, Any]:
    """Spawn one process of IMAGE with `goal` (default capabilities: everything the image
    declares it needs), wait for it and print its transcript. Returns its final status."""
    with typed_errors():
        return await _run_agent(db, image, goal, caps, console, timeout)


async def _run_agent(db: str | Path, image: str, goal: str, caps: list[str] | None,
                     console: Console, timeout: float | None) -> dict[str, Any]:
    async with open_sandboxes(db) as sandboxes, Kernel.open(db, sandboxes=sandboxes) as kernel:
        spec = await load_image(kernel, image)
        if not spec.planner:
            raise InvalidArgument(f"image {spec.name} has no planner settings")
        granted = parse_caps(caps)
        pid = kernel.spawn(spec.name, caps=list(spec.needs) if granted is None else granted,
                           args=goal)
        console.print(Text(f"process {pid} ({spec.name}:{spec.version}) started",
                           style="dim"))
        proc = kernel.process(pid)
        console.print(heading("Transcript"))
        printed = 0
        notices = WaitNotices(str(db))

        def show() -> None:
            nonlocal printed
            lines, printed = transcript(proc.planner, proc.history, pid, printed)
            for line in lines:
                console.print(line)
            for notice in notices.new(kernel.approvals()):
                console.print(notice, soft_wrap=True)  # a command is never cut in two

        async with trio.open_nursery() as nursery:
            async def follow() -> None:
                while True:
                    show()
                    await trio.sleep(FOLLOW_SECONDS)

            nursery.start_soon(follow)
            status = await kernel.wait(pid, timeout)
            if status["state"] not in ("exited", "killed"):
                kernel.kill(pid, "libos run: timed out")
                status = await kernel.wait(pid, 10)
            nursery.cancel_scope.cancel()
        show()
        console.print(heading("Result"))
        line = Text(f"process {pid} {status['state']} ({status['reason']}): ")
        line.append(inert(status["result"], 2000))
        console.print(line)
        return status


def exit_code(status: dict[str, Any]) -> int:
    code = status.get("exit_code")
    return code if isinstance(code, int) and 0 <= code < 256 else 1

