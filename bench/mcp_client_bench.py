"""MCP client benchmark: a tool of an external MCP server (the SDK's own server over stdio)
called through a kernel (`kernel.attach_mcp`: libos's bounded transport, the host tool's
check, durable intent and outcome records) beside the same tool called with the SDK's own
client and stdio transport, no libos. Also the time to attach (start the server, shake hands,
list and register its tools).

Run with `python -m bench.mcp_client_bench` (or `python -m bench --only mcp_client_bench`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench.timing import best_async_us
from broker import AgentImage, Kernel

SERVER = '''
from mcp.server.mcpserver import MCPServer

server = MCPServer("bench")

@server.tool()
def echo(text: str) -> str:
    """Say it back."""
    return text

server.run("stdio")
'''


async def _measure(root: Path, n_calls: int) -> dict[str, Any]:
    from mcp import Client, StdioServerParameters

    script = root / "server.py"
    script.write_text(SERVER)
    command = [sys.executable, str(script)]
    out: dict[str, Any] = {}
    async with Client(StdioServerParameters(command=command[0], args=command[1:]),
                      mode="legacy") as client:
        out["sdk_direct_us"] = round(await best_async_us(
            lambda: client.call_tool("echo", {"text": "hi"}), n_calls, repeat=3), 1)
    async with Kernel.open(root / "bench.db") as kernel:
        started = time.perf_counter()
        async with kernel.attach_mcp("bench", command=command) as attached:
            out["attach_ms"] = round((time.perf_counter() - started) * 1000, 1)
            await kernel.register_image(AgentImage("bench", tools=tuple(attached.tools),
                                                   needs=["mcp:bench/*:call"]))
            pid = kernel.spawn("bench", caps=["mcp:bench/*:call"])
            out["libos_kernel_us"] = round(await best_async_us(
                lambda: kernel.call_tool(pid, "bench.echo", {"text": "hi"}), n_calls,
                repeat=3), 1)
    out["kernel_over_direct"] = round(out["libos_kernel_us"] / out["sdk_direct_us"], 2)
    out["overhead_us"] = round(out["libos_kernel_us"] - out["sdk_direct_us"], 1)
    return out


def run(n_calls: int = 200) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="libos-bench-") as tmp:
        return trio.run(_measure, Path(tmp), n_calls)


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:36} {value}")
