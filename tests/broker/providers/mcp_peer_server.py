"""A tiny external MCP server for the MCP client's tests (the SDK's MCPServer, once FastMCP).

`python -m tests.broker.providers.mcp_peer_server stdio` (or `http PORT`). Its tools are honest
(`echo`, `add`) or hostile (`hang`, `crash`, `huge`), and with `--hostile-schemas`
it also lists tools whose input schemas attack the client (a remote `$ref`, a pattern with a
backreference, a catastrophic pattern that RE2 runs in linear time).
"""

from __future__ import annotations

import os
import signal
import sys

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("peer")


@server.tool()
def echo(text: str) -> str:
    """Say it back."""
    return text


@server.tool()
def add(a: int, b: int) -> dict[str, int]:
    """Add two numbers."""
    return {"sum": a + b}


@server.tool()
async def hang() -> str:
    """Never answer (without holding the server: other calls are still answered)."""
    await anyio.sleep(3600)
    return "never"


@server.tool()
def crash() -> str:
    """Die in the middle of the call."""
    os.kill(os.getpid(), signal.SIGKILL)
    return "never"


@server.tool()
def huge(megabytes: int) -> str:
    """A result of that many megabytes."""
    return "x" * (megabytes << 20)


@server.tool()
def pattern(text: str) -> str:
    """Accept text (its schema's pattern is catastrophic for a backtracking engine)."""
    return "matched"


HOSTILE = {
    "remote_ref": {"type": "object", "properties": {
        "x": {"$ref": "http://127.0.0.1:9/evil.json"}}},
    "backreference": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "^(a+)\\1$"}}},
}


def hostile_schemas() -> None:
    for name, schema in HOSTILE.items():
        server.add_tool(lambda x=None: "ran", name=name, description=f"hostile: {name}")
        server._tool_manager._tools[name].parameters = schema
    # `pattern`'s schema: catastrophic backtracking for Python's `re`, linear in RE2.
    server._tool_manager._tools["pattern"].parameters = {
        "type": "object", "required": ["text"],
        "properties": {"text": {"type": "string", "pattern": "^(a+)+$"}}}


if __name__ == "__main__":
    if "--hostile-schemas" in sys.argv:
        hostile_schemas()
    if sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
