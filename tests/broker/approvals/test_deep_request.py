"""An approval request for a call whose arguments nest as deep as a call may (`too_deep`'s
`MAX_DEPTH`, 512 levels in all) is filed, shown and answered like any other: storing its
arguments for people to read went down two Python frames a level and raised RecursionError
past about 490 (the call failed with "tool.call failed: RecursionError", a traceback logged,
no `ask` record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from broker import AgentImage, HostCall, Kernel, host_tool
from broker.kernel.too_deep import MAX_DEPTH


@host_tool(kind="email", right="send", resource=lambda args: args["to"])
def send_note(call: HostCall, to: str, body: Any = None) -> dict:
    """Send a message."""
    return {"sent": to}


def _nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


async def test_a_request_as_deep_as_a_call_may_nest_is_filed_and_answered(tmp_path: Path) -> None:
    body = _nested(MAX_DEPTH - 2)  # with the arguments' map: one level short of the bound
    async with Kernel.open(tmp_path / "k.db", host_tools=[send_note]) as kernel:
        await kernel.register_image(AgentImage("a", tools=("send_note",), needs=["email:*:send"]))
        pid = kernel.spawn("a", caps=[{"kind": "email", "scope": "*", "rights": ["send"],
                                       "effect": "ask"}])
        result: list[Any] = []

        async def call() -> None:
            result.append(await kernel.call_tool(pid, "send_note", {"to": "ann", "body": body}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            with trio.fail_after(30):
                while not kernel.approvals():
                    await trio.sleep(0.01)
            [request] = kernel.approvals()
            assert request["args"] == {"to": "ann", "body": body}  # shown whole, as asked
            kernel.approve(request["id"])
        assert result == [{"sent": "ann"}]
        phases = [(r["syscall"], r["phase"]) for r in kernel.audit(pid)]
        assert ("host.send_note", "ask") in phases and ("host.send_note", "outcome") in phases
