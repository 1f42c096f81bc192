"""Red team 35: a host's `call_tool` whose arguments hold themselves (a list in itself) raised
an untyped ValueError ("Circular reference detected", canonical JSON's) out of the dispatcher,
with nothing on the record. It is refused as the other arguments JSON cannot encode are:
`InvalidArgument`, one `rejected` record keeping a summary, and the process goes on. (The
copy a host tool gets, `json_tree.copy_tree`, has no cycle check: none reaches it.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, HostCall, InvalidArgument, Kernel, host_tool


@host_tool(kind="email", right="send", resource=lambda args: args["to"])
def send_note(call: HostCall, to: str, body: Any = None) -> dict:
    """Send a message."""
    return {"sent": to}


async def test_arguments_holding_themselves_are_refused_typed(store_at: Path | str) -> None:
    async with Kernel.open(store_at, host_tools=[send_note]) as kernel:
        await kernel.register_image(AgentImage("a", tools=("send_note",),
                                               needs=["email:*:send"]))
        pid = kernel.spawn("a", caps=["email:*:send"])
        body: list[Any] = []
        body.append(body)
        with pytest.raises(InvalidArgument, match="holding itself"):
            await kernel.call_tool(pid, "send_note", {"to": "ann", "body": body})
        [refused] = [r for r in kernel.audit(pid) if r["phase"] == "rejected"]
        assert refused["syscall"] == "tool.call" and "holding itself" in refused["detail"][
            "message"]
        # The neighbour: the process goes on, and the chain verifies.
        assert await kernel.call_tool(pid, "send_note", {"to": "ann", "body": [[1]]}) == {
            "sent": "ann"}
        assert not [r for r in kernel.audit(pid) if r["syscall"] == "host.send_note"
                    and r["phase"] == "rejected"]
        assert kernel.verify_audit()[1] == []
