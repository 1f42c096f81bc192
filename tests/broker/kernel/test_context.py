"""A process's task starts in a fresh context: nothing the task that spawned it had set (an
MCP call's channel to its client, say) reaches the process, so its approval requests cannot
be routed by what its spawner was doing."""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from broker.kernel.approvals import ApprovalQueue
from tests.broker.kernel.test_approvals import ASK_WRITE, NEEDS
from tests.conftest import open_image

CHANNEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("channel", default=None)


class Seen:
    """A front end that notes which channel the asking task had."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, str | None]] = []

    def requested(self, request: dict[str, Any], queue: ApprovalQueue) -> None:
        self.requests.append((request["pid"], CHANNEL.get()))
        queue.answer(request["id"], "once", who="test")


async def test_a_spawned_process_does_not_inherit_its_spawners_context(db_path: Path) -> None:
    seen = Seen()
    async with Kernel.open(db_path, approvers=[seen]) as kernel:
        Path(kernel.fs.root, "out").mkdir()  # type: ignore[arg-type]
        await open_image(kernel, needs=(*NEEDS, "proc:*:spawn"))
        await open_image(kernel, "kid", needs=NEEDS, planner={"kind": "scripted", "actions": [
            {"tool": "write_file", "args": {"path": "/out/child.txt", "data": "c"}}]})
        host = kernel.spawn("agent", caps=[ASK_WRITE, "proc:kid:spawn"])
        CHANNEL.set("the host's call")
        # The host-driven call asks in its own task: that task's context is the caller's.
        assert await kernel.call_tool(host, "write_file",
                                      {"path": "/out/host.txt", "data": "h"}) == 1
        # A child spawned inside such a call runs in its own task, in a fresh context.
        child = await kernel.call_tool(host, "spawn", {"image": "kid", "caps": [ASK_WRITE]})
        with trio.fail_after(10):
            status = await kernel.wait(child)
        assert status["state"] == "exited"
        assert Path(kernel.fs.root, "out/child.txt").read_text() == "c"  # type: ignore[arg-type]
    assert seen.requests == [(host, "the host's call"), (child, None)]
