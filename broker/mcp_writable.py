"""A reply `libos mcp` cannot write is still an answer, typed.

The `mcp` SDK's stdio writer serialises each message in a task of its own; one it cannot
serialise (text UTF-8 cannot encode, a lone surrogate) ended that task, and with it the server
stopped writing while its stdin reader kept it alive: the client waited forever. `Writable`
wraps the server's write stream and serialises each message first, as that writer will: a
response it cannot write becomes a JSON-RPC error on the same id (-32603, `libos: ...`), said
on stderr too, and serving goes on; a request or notification of the server's own fails its
sender with `ProtocolError` (an elicitation fails, on the record).
"""

from __future__ import annotations

import sys
from typing import Any

from broker.errors import ProtocolError
from broker.inert import shown
from broker.json_text import utf8

INTERNAL_ERROR = -32603


def unwritable(item: Any) -> str | None:
    """Why the SDK's writer could not write `item` (a `SessionMessage`), or None."""
    try:
        text = item.message.model_dump_json(by_alias=True, exclude_unset=True)
        text.encode("utf-8")
    except Exception as exc:  # (pydantic's serialisation error, or UnicodeEncodeError)
        return f"{type(exc).__name__}: {exc}"
    return None


class Writable:
    """A write stream (the SDK's `WriteStream`) that only passes on what can be written."""

    def __init__(self, write: Any) -> None:
        self._write = write

    async def send(self, item: Any) -> None:
        import mcp_types as types
        from mcp.shared.message import SessionMessage

        why = unwritable(item)
        if why is not None:
            message = item.message
            print(f"libos mcp: PROTOCOL_ERROR: a message could not be written ({shown(why, 300)})",
                  file=sys.stderr, flush=True)
            if not isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
                raise ProtocolError(f"the message could not be written: {why[:300]}")
            rid = message.id if not isinstance(message.id, str) or utf8(message.id) else None
            item = SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(
                code=INTERNAL_ERROR, message="libos: PROTOCOL_ERROR: the reply could not be "
                                             "written (text UTF-8 cannot encode)")))
        await self._write.send(item)

    async def aclose(self) -> None:
        await self._write.aclose()

    def close(self) -> None:
        self._write.close()

    async def __aenter__(self) -> Writable:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
