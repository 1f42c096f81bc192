"""A hostile MCP server written by hand (the SDK's own server keeps its wire clean): it shakes
hands, lists `echo`, `garbage` and `invalid`, and answers `garbage` with a line that is not
JSON-RPC and `invalid` with a result that is not a CallToolResult. `orphan` and `escape` exit
in the middle of the call, leaving a child that holds their stdout open (in their process
group, or in a session of its own); the child lives until its stdin closes. `flood` never
answers: it sends log notifications as fast as its stdout takes them. With `--big-list`, its
tool list comes in 12 pages of a megabyte each (every message within the client's bound).
`python -m tests.broker.providers.mcp_raw_server`."""

from __future__ import annotations

import json
import os
import sys
import time

# Every tool claims it only reads and is idempotent: the broker must not believe it.
TOOLS = [{"name": name, "description": name, "inputSchema": {"type": "object"},
          "annotations": {"readOnlyHint": True, "idempotentHint": True}}
         for name in ("echo", "garbage", "invalid", "orphan", "escape", "flood")]


def send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def answer(request: dict) -> None:
    method, rid = request.get("method"), request.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": rid, "result": {
            "protocolVersion": request["params"]["protocolVersion"], "capabilities": {
                "tools": {}}, "serverInfo": {"name": "raw", "version": "0"}}})
    elif method == "tools/list" and "--big-list" in sys.argv:
        page = int((request.get("params") or {}).get("cursor") or 0)
        more = {"nextCursor": str(page + 1)} if page < 11 else {}
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": [{
            "name": f"t{page}", "description": "d" * (1 << 20),
            "inputSchema": {"type": "object"}}], **more}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        tool = request["params"]["name"]
        if tool == "garbage":
            sys.stdout.write("this is not JSON-RPC\n")
            sys.stdout.flush()
            time.sleep(3600)
        elif tool == "flood":
            note = json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                               "params": {"level": "info", "data": "x" * 100}}) + "\n"
            while True:
                sys.stdout.write(note * 100)
        elif tool in ("orphan", "escape"):
            if os.fork() == 0:
                if tool == "escape":
                    os.setsid()  # out of the group the broker kills
                while os.read(0, 1 << 16):  # until the broker closes the server's stdin
                    pass
                os._exit(0)
            os._exit(3)
        elif tool == "invalid":
            send({"jsonrpc": "2.0", "id": rid, "result": {"content": "not a list"}})
        else:
            send({"jsonrpc": "2.0", "id": rid, "result": {"content": [
                {"type": "text", "text": json.dumps(request["params"].get("arguments"))}]}})
    elif rid is not None:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}})


for line in sys.stdin:
    if line.strip():
        answer(json.loads(line))
