"""An embedder's MCP server: a kernel opened with its host tools serves one process over
stdio (`broker.mcp_server.serve_process`). Run as `python -m tests.broker.kernel.host_mcp_server
DB OUTBOX`; each email sent is a JSON line in OUTBOX (the embedder's state, handed in)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import trio

from broker import AgentImage, HostCall, Kernel, host_tool
from broker.mcp_server import ElicitingFrontEnd, serve_process

ASK_PARTNERS = {"kind": "email", "scope": "*@partner.com", "rights": ["send"], "effect": "ask"}


@host_tool(kind="email", right="send", resource=lambda args: args["to"].lower())
def send_email(call: HostCall, to: str, subject: str) -> dict[str, Any]:
    """Send an email."""
    with Path(call.state).open("a") as outbox:
        outbox.write(json.dumps({"to": to, "subject": subject}) + "\n")
    return {"sent": to}


async def main(db: str, outbox: str) -> None:
    async with Kernel.open(db, host_tools=[send_email], host_state=outbox,
                           approvers=[ElicitingFrontEnd()]) as kernel:
        await kernel.register_image(AgentImage("mailer", tools=("send_email",),
                                               needs=["email:*:send"]))
        pid = kernel.spawn("mailer", caps=["email:*@example.com:send", ASK_PARTNERS])
        await serve_process(kernel, pid)


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:3])
