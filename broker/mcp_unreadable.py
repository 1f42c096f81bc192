"""A message the `mcp` SDK cannot read still gets an answer.

The SDK's stdio transport hands the server an exception for a line its parser refuses (JSON
nested past its parser's depth, about 200 levels; text that is not JSON; JSON that is no
JSON-RPC message), and the server drops it: a client waiting for the reply waited forever.
`Answering` wraps the server's read stream: each such line is answered with a JSON-RPC error
(-32700 parse error when it is not JSON this broker can read, -32600 invalid request when it
is JSON but no message), on the request's id when the line is a request whose id can be read,
else on id null; then the next message is read as usual. A notification or a response gets
no answer (JSON-RPC answers neither). A response whose id can be read (a client's reply to
the server's own request, an elicitation's form, nested too deep for the SDK) reaches the
server as an error response on that id: the request it answers fails, typed, instead of
waiting for a reply that was dropped.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import anyio

from broker.json_text import utf8

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
MAX_REREAD = 1 << 20  # characters of a refused line read again for its id, at most


class Answering:
    """A read stream (the SDK's `ReadStream`) that answers the items it refuses on `write`
    and yields the rest: the server only ever sees messages it can serve."""

    def __init__(self, read: Any, write: Any) -> None:
        self._read = read
        self._write = write

    @property
    def last_context(self) -> Any:  # the sender's context the SDK's streams carry
        return getattr(self._read, "last_context", None)

    async def receive(self) -> Any:
        while True:
            item = await self._read.receive()
            if not isinstance(item, Exception):
                return item
            unread = unread_response(item)
            if unread is not None:
                return unread
            reply = refusal(item)
            if reply is not None:  # (a client gone: the read side ends too)
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self._write.send(reply)

    async def aclose(self) -> None:
        await self._read.aclose()

    def close(self) -> None:
        self._read.close()

    def __aiter__(self) -> Answering:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Answering:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def refusal(error: Exception) -> Any:
    """The error message answering the line `error` refused, or None (a notification)."""
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    message = _message_of(error)
    if message is None:
        code, text = PARSE_ERROR, ("libos: the message is not JSON this server can read "
                                   "(malformed, or nested too deep)")
        ident = None
    else:
        if isinstance(message, dict) and (("method" in message and "id" not in message)
                                          or "result" in message or "error" in message):
            return None  # a notification, or a response: JSON-RPC answers neither
        rid = message.get("id") if isinstance(message, dict) else None
        ident = rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None
        if isinstance(ident, str) and not utf8(ident):
            ident = None  # (a lone surrogate: the reply could not be written, serving ended)
        code, text = INVALID_REQUEST, "libos: the message is not a valid JSON-RPC message"
    return SessionMessage(types.JSONRPCError(
        jsonrpc="2.0", id=ident, error=types.ErrorData(code=code, message=text)))


def unread_response(error: Exception) -> Any:
    """For a refused line that is a response whose id can be read: an error response on that
    id, for the server's own waiting request (else None)."""
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    message = _message_of(error)
    if not isinstance(message, dict) or "method" in message or not (
            "result" in message or "error" in message):
        return None
    rid = message.get("id")
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return None
    return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(
        code=PARSE_ERROR, message="libos: the client's reply could not be read (not a "
                                  "valid response, or nested too deep)")))


def _message_of(error: Exception) -> Any:
    """The refused message as JSON, or None when it is not JSON this broker can read (too
    deep for Python's parser as well, malformed, or not at hand)."""
    errors = getattr(error, "errors", None)
    try:
        found = errors(include_url=False) if callable(errors) else []
    except Exception:
        return None
    line = next((e.get("input") for e in found if e.get("type") == "json_invalid"), None)
    if isinstance(line, str):  # the parser refused the line itself
        if len(line) > MAX_REREAD:
            return None
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            return None
    if line is not None or not found:
        return None
    # JSON, but no JSON-RPC message. The message is the input of an error about all of it
    # (no object: its loc names the member only) or about a field it lacks (`missing`, loc
    # member and field); any other error's input is a field's value, which may be an object
    # too (an id that is one: `{"id": N, "result": {}}` is no reply to request N).
    return next((e.get("input") for e in found if len(e.get("loc", ())) == 1
                 or (e.get("type") == "missing" and len(e.get("loc", ())) == 2)), {})
