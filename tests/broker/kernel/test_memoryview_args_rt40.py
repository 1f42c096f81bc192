"""Red team 40 on lane pghard's memoryview change (a memoryview among a call's arguments
hashed as the bytes it views, so its approval request is listed and answered): the views a
host may pass that are not one plain run of bytes. A view with gaps (`b"abcdef"[::2]`)
failed the call with msgpack's untyped BufferError (its replay payload packed,
`audit_detail.pack_payload`, then the host tool's copy, `host_tools._copy`); a released view
was hashed by its repr (its address, what the change meant to end), then failed the call
with an untyped ValueError (its summary's size). Each is now refused typed
(`InvalidArgument`), on the record, and the process goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, HostCall, InvalidArgument, Kernel, host_tool


@host_tool(kind="email", right="send", resource=lambda args: args["to"])
def send_note(call: HostCall, to: str, body: Any = None) -> dict:
    """Send a message."""
    return {"sent": to, "body": bytes(body) if isinstance(body, memoryview) else body}


def _released() -> memoryview:
    view = memoryview(b"secret")
    view.release()
    return view


@pytest.mark.parametrize(("view", "said"), [(_released, "released"),
                                            (lambda: memoryview(b"abcdef")[::2], "plain data")],
                         ids=["released", "gaps"])
async def test_a_view_not_of_plain_bytes_is_refused_typed(
        store_at: Path | str, view: Any, said: str) -> None:
    async with Kernel.open(store_at, host_tools=[send_note]) as kernel:
        await kernel.register_image(AgentImage("a", tools=("send_note",),
                                               needs=["email:*:send"]))
        pid = kernel.spawn("a", caps=["email:*:send"])
        with pytest.raises(InvalidArgument, match=said):
            await kernel.call_tool(pid, "send_note", {"to": "ann", "body": view()})
        [refused] = [r for r in kernel.audit(pid) if r["phase"] == "rejected"]
        assert said in refused["detail"]["message"]
        # The neighbour: a view of its own bytes runs, and the chain verifies.
        assert await kernel.call_tool(pid, "send_note", {"to": "ann", "body": memoryview(
            b"hi")}) == {"sent": "ann", "body": b"hi"}
        assert kernel.verify_audit()[1] == []
