"""Red-team attacks on `proc.exec` (issue 16): narrowing a process to a new image must never
turn a grant bound to exact arguments (an `once` answer) into one for any arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, ApprovalDenied, HostCall, Kernel, host_tool
from tests.broker.kernel.host_fixtures import Outbox

FAR = 4_000_000_000.0  # an expiry in the image's declared need: the once grant is not within


def flipping_send() -> Any:
    """A send tool whose resource function answers differently the second time it is asked
    for a given call: the approved call's re-check fails, its `once` grant stays unspent."""
    seen: dict[str, int] = {}

    def resource(args: dict[str, Any]) -> str:
        seen[args["body"]] = seen.get(args["body"], 0) + 1
        return args["to"] if seen[args["body"]] != 2 else "someone@else.com"

    @host_tool(kind="email", right="send", resource=resource)
    def mail(call: HostCall, to: str, body: str) -> str:
        call.state.sent.append({"to": to, "body": body})
        return "sent"

    return mail


async def test_exec_keeps_a_once_grant_bound_to_its_arguments(db_path: Path) -> None:
    outbox = Outbox()
    async with Kernel.open(db_path, host_tools=[flipping_send()], host_state=outbox) as kernel:
        await kernel.register_image(AgentImage("asker", tools=("mail", "exec"), needs=[
            "email:*:send", "proc:*:exec"]))
        await kernel.register_image(AgentImage("sender", tools=("mail",), needs=[
            {"kind": "email", "scope": "*", "rights": ["send"], "expires": FAR}]))
        ask = {"kind": "email", "scope": "*", "rights": ["send"], "effect": "ask"}
        pid = kernel.spawn("asker", caps=[ask, "proc:sender:exec"])
        approved = {"to": "bob@example.com", "body": "lunch?"}

        async def call() -> None:
            with pytest.raises(ApprovalDenied, match="no longer matches"):
                await kernel.call_tool(pid, "mail", approved)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            with trio.fail_after(5):
                while not kernel.approvals():
                    await trio.sleep(0.01)
            kernel.approve(kernel.approvals()[0]["id"])  # once, for exactly `approved`
        [once] = [c for c in kernel.capabilities(pid) if c["effect"] == "allow"
                  and c["kind"] == "email"]
        assert once.get("args_hash") and outbox.sent == []

        await kernel.call_tool(pid, "exec", {"image": "sender"})
        before = len(kernel.audit())
        # The attack: other arguments to the approved recipient. They must be put to a person
        # again (the asking capability narrowed with the image), never sent on the once grant.
        attack = {"to": "bob@example.com", "body": "wire $9k"}

        async def attack_call() -> None:
            with pytest.raises(ApprovalDenied):
                await kernel.call_tool(pid, "mail", attack)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attack_call)
            with trio.fail_after(5):
                while not kernel.approvals():
                    await trio.sleep(0.01)
            [request] = kernel.approvals()
            assert request["args"] == attack
            kernel.deny(request["id"])
        records = [r for r in kernel.audit()[before:] if r["syscall"] == "host.mail"]
        assert [r["phase"] for r in records] == ["ask", "denied"]
        assert outbox.sent == []
        # The neighbour: exactly the approved arguments still go through, once.
        assert await kernel.call_tool(pid, "mail", approved) == "sent"
        assert outbox.sent == [approved]

