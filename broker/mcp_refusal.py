"""A `libos mcp` that cannot serve still answers: each request on stdin gets a JSON-RPC error
naming the typed error (`libos: CONFLICT: another broker has ... open`), so an MCP client
shows the person why, instead of "Connection closed". The store held by another broker, a
process that does not exist or has ended, an image that does not load: each is refused this
way, then reported on stderr and by the exit status as usual.

What a client sends is read in bounded lines; a notification gets no answer (JSON-RPC); after
`MAX_ANSWERS` answers, a line past `MAX_LINE` bytes, `IDLE` seconds of silence or the end of
stdin, it stops.
"""

from __future__ import annotations

import json
import os
from typing import Any

import trio

from broker.errors import LibosError

MAX_LINE = 1 << 20
MAX_ANSWERS = 16
IDLE = 30.0
SERVER_ERROR = -32000  # JSON-RPC's range for a server's own errors
MAX_MESSAGE = 1000


def answer(line: bytes, error: LibosError) -> bytes | None:
    """The error response to one line, or None (a notification, or not a request)."""
    try:
        request: Any = json.loads(line)
    except ValueError:
        return None
    if not isinstance(request, dict) or "method" not in request:
        return None
    rid = request.get("id")
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return None
    message = f"libos: {error.code}: {error.message}"[:MAX_MESSAGE]
    return json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
        "code": SERVER_ERROR, "message": message,
        "data": {"error": error.code, "message": error.message[:MAX_MESSAGE]}}},
        ensure_ascii=True).encode() + b"\n"


async def refuse_stdio(error: LibosError) -> None:
    """Answer the client's requests on stdio with `error` until it hangs up (bounded)."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    buffer = bytearray()
    answered = 0
    async with stdin, stdout:
        while answered < MAX_ANSWERS:
            chunk = b""
            with trio.move_on_after(IDLE):
                chunk = await stdin.receive_some(1 << 16)
            if not chunk:
                return
            buffer += chunk
            while (end := buffer.find(b"\n")) >= 0 and answered < MAX_ANSWERS:
                line = bytes(buffer[:end])
                del buffer[:end + 1]
                reply = answer(line, error)
                if reply is not None:
                    try:
                        await stdout.send_all(reply)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    answered += 1
            if len(buffer) > MAX_LINE:
                return
