"""Host tools the host-tool suites share: an email tool scoped by recipient, with the
embedder's outbox reaching it as state (never a global)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker import AgentImage, HostCall, Kernel, host_tool


@dataclass
class Outbox:
    sent: list[dict[str, Any]] = field(default_factory=list)
    calls: list[HostCall] = field(default_factory=list)


@host_tool(kind="email", right="send", resource=lambda args: args["to"].lower())
def send_email(call: HostCall, to: str, subject: str, body: str = "") -> dict[str, Any]:
    """Send an email."""
    call.state.calls.append(call)
    call.state.sent.append({"to": to, "subject": subject, "body": body})
    return {"sent": len(call.state.sent), "to": to}


@host_tool(kind="email", right="read", resource="folder", read_only=True)
async def count_mail(call: HostCall, folder: str) -> int:
    """How many emails were sent (a read-only, async tool)."""
    call.state.calls.append(call)
    return len(call.state.sent)


MAILER = AgentImage("mailer", tools=("send_email", "count_mail", "read_file"),
                    needs=["email:*:send,read", "fs:/**:read"])


def email_calls(kernel: Kernel, pid: int | None = None) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == "host.send_email"]
