"""A `libos mcp` that cannot serve still answers: each request on stdin gets a JSON-RPC error
naming the typed error (`libos: CONFLICT: another broker has ... open`), so an MCP client
shows the person why, instead of "Connection closed". The store held by another broker, a
process that does not exist or has ended, an image that does not load: each is refused this
way, then reported on stderr and by the exit status as usual.

What a client sends is read in bounded lines; a notification gets no answer (JSON-RPC), a line
that is not JSON it can read gets one on id null (`broker.mcp_unreadable` does the same while
serving); after
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
PARSE_ERROR = -32700
MAX_MESSAGE = 1000


def answer(line: bytes, error: LibosError) -> bytes | None:
    """The error response to one line, or None (a notification, or not a request). A line
    that is not JSON this broker can read (nested too deep for Python's parser, or not JSON
    at all) is answered on id null, as JSON-RPC answers a parse error."""
    try:
        request: Any = json.loads(line)
    except (ValueError, RecursionError):
        return _response(None, PARSE_ERROR, error)
    if not isinstance(request, dict) or "method" not in request:
        return None
    rid = request.get("id")
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return None
    return _response(rid, SERVER_ERROR, error)


def _response(rid: str | int | None, code: int, error: LibosError) -> bytes:
    message = f"libos: {error.code}: {error.message}"[:MAX_MESSAGE]
    return json.dumps({"jsonrpc": "2.0", "id": rid, "error": {
        "code": code, "message": message,
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
