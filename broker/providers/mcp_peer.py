"""A connection to an external MCP server (the `mcp` extra, imported lazily): its tool list,
and calls to its tools, as typed errors and bounded data.

Everything a server sends is hostile. Over stdio the broker runs the server itself and reads
its stdout through a transport of its own, not the SDK's (which buffers a line of any size):
a message longer than `max_message` bytes, or a line that is not JSON-RPC, ends the
connection (the server is killed) and every call in flight fails with `LimitExceeded` or
`ToolFailed`. A server that exits fails its calls with `ToolFailed`. Over streamable HTTP the
response bodies and SSE events are bounded the same way. The tool list is paged at most
`MAX_PAGES` times, holds at most `MAX_TOOLS` tools, and all its pages together are at most
`MAX_LIST_BYTES` (the broker holds every page while it registers the tools). Calls go to the
session directly, never through the SDK's output-schema check (it would run a server's
regexes in Python's `re`).

What a tool returns becomes plain data: its structured content when it has some, else its
text, else its content blocks as JSON. A result the server marks as an error is `ToolFailed`
with its text (bounded). A peer that broke stays broken: each later call fails at once with
what broke it; the embedder attaches the server again to reconnect.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from broker.errors import InvalidArgument, LibosError, LimitExceeded, ToolFailed

log = logging.getLogger("libos.mcp_peer")

MAX_MESSAGE = 4 << 20  # bytes of one JSON-RPC message from a server
MAX_TOOLS = 256
MAX_PAGES = 16
MAX_LIST_BYTES = 8 << 20  # received while listing tools, all pages together
MAX_TEXT = 200  # of a server's own error text, in an error (and so in the audit)
MAX_STDERR = 2048  # the tail of a stdio server's stderr kept for an error message
CONNECT_DEADLINE = 30.0  # seconds to start a server and list its tools
CHUNK = 1 << 16
BUFFERED = 16  # messages between the pipes and the session
EXIT_GRACE = 0.5  # seconds to read what a server wrote before it exited
INHERITED = ("HOME", "LANG", "LC_ALL", "LOGNAME", "PATH", "SHELL", "TERM", "TMPDIR", "USER")


@dataclass(frozen=True)
class McpServerSpec:
    """How to reach a server: a command run over stdio (`command`, in `cwd`, with `env` as its
    whole environment, else only `INHERITED` of the broker's: a server is someone else's code,
    and the broker's environment may hold its secrets), or a streamable HTTP endpoint
    (`url`)."""

    command: tuple[str, ...] = ()
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise InvalidArgument("an MCP server is a command or a url, exactly one of them")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise InvalidArgument("an MCP server's url is http:// or https://")
        if any(not isinstance(part, str) or "\x00" in part for part in self.command):
            raise InvalidArgument("an MCP server's command is a list of strings without NUL")

    def shown(self) -> str:
        """What the audit names it by (never its environment: it may hold secrets)."""
        return self.url if self.url else " ".join(self.command)[:500]


@dataclass
class McpPeer:
    """One connected server: its tools (as listed) and calls to them."""

    name: str
    max_message: int = MAX_MESSAGE
    session: Any = None
    tools: list[Any] = field(default_factory=list)
    broken: LibosError | None = None
    stderr_tail: bytes = b""
    received: int = 0  # bytes of messages from the server so far

    def break_with(self, error: LibosError) -> None:
        if self.broken is None:
            self.broken = error

    def _gone(self) -> LibosError:
        """What broke the connection, as a new error of its type (each call its own)."""
        if self.broken is None:
            return ToolFailed(f"mcp server {self.name} closed the connection")
        return type(self.broken)(self.broken.message)

    async def call(self, tool: str, args: dict[str, Any]) -> Any:
        """Call a tool; its result as plain data, or a typed error."""
        import anyio
        import mcp_types as types
        from mcp.shared.exceptions import MCPError

        if self.broken is not None:
            raise self._gone()
        request = types.CallToolRequest(params=types.CallToolRequestParams(name=tool,
                                                                           arguments=args))
        try:  # written as the SDK writes it: arguments past its serializer's depth are ours
            request.model_dump(by_alias=True, mode="json", exclude_none=True)
        except ValueError as exc:  # (red team 35: reported as the server's invalid result)
            raise InvalidArgument(f"the arguments cannot be sent to mcp server {self.name}, "
                                  f"not sent ({_short(str(exc).splitlines()[0])})") from None
        try:
            result = await self.session.send_request(request, types.CallToolResult)
        except MCPError as exc:
            if self.broken is not None or exc.error.code == types.CONNECTION_CLOSED:
                raise self._gone() from None
            raise ToolFailed(f"mcp server {self.name} refused the call: "
                             f"{_short(exc.error.message)}") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError, anyio.ClosedResourceError,
                anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            raise self._gone() from None
        except ValueError as exc:  # pydantic: a result that is not a CallToolResult
            raise ToolFailed(f"mcp server {self.name} sent an invalid result "
                             f"({_short(str(exc).splitlines()[0])})") from None
        return _plain(self.name, result)

    async def list_tools(self) -> list[Any]:
        """The server's tools, paged, bounded."""
        import mcp_types as types

        tools: list[Any] = []
        cursor = None
        start = self.received
        for _ in range(MAX_PAGES):
            params = None if cursor is None else types.PaginatedRequestParams(cursor=cursor)
            page = await self.session.send_request(types.ListToolsRequest(params=params),
                                                   types.ListToolsResult)
            tools.extend(page.tools)
            if self.received - start > MAX_LIST_BYTES:
                raise LimitExceeded(f"mcp server {self.name} lists more than {MAX_LIST_BYTES} "
                                    "bytes of tools")
            if len(tools) > MAX_TOOLS:
                raise LimitExceeded(f"mcp server {self.name} lists more than {MAX_TOOLS} tools")
            cursor = page.next_cursor
            if cursor is None:
                return tools
        raise LimitExceeded(f"mcp server {self.name} pages its tool list more than "
                            f"{MAX_PAGES} times")


def _short(text: Any) -> str:
    text = " ".join(str(text)[:MAX_TEXT * 2].split())
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _plain(name: str, result: Any) -> Any:
    """A `CallToolResult` as plain data, or `ToolFailed` for a result marked as an error."""
    blocks = [block.model_dump(mode="json", by_alias=True, exclude_none=True)
              for block in result.content]
    texts = [b["text"] for b in blocks if b.get("type") == "text"]
    if result.is_error:
        raise ToolFailed(f"mcp server {name}: the tool failed: "
                         f"{_short(' '.join(texts) or 'no message')}")
    if result.structured_content is not None:
        return result.structured_content
    if len(texts) == len(blocks):
        return "\n".join(texts)
    return blocks


@asynccontextmanager
async def connect(name: str, spec: McpServerSpec, *, max_message: int = MAX_MESSAGE,
                  connect_deadline: float = CONNECT_DEADLINE) -> AsyncIterator[McpPeer]:
    """Start (or reach) the server, shake hands and list its tools; the peer until the block
    ends, when the server is stopped. Failing to connect is a typed error: `LimitExceeded`
    for a server that does not answer within `connect_deadline` seconds, else `ToolFailed`
    (or what broke the connection)."""
    try:
        from mcp import Client
    except ImportError:
        raise InvalidArgument("an MCP client needs the mcp extra: pip install 'libos[mcp]'"
                              ) from None
    peer = McpPeer(name, max_message=max_message)
    transport = _http(peer, spec.url) if spec.url else _stdio(peer, spec)
    connected = False
    try:
        with trio.CancelScope(deadline=trio.current_time() + connect_deadline) as scope:
            async with Client(transport, mode="legacy") as client:
                peer.session = client.session
                peer.tools = await peer.list_tools()
                connected = True
                scope.deadline = math.inf  # connected: the deadline was the handshake's
                yield peer
    except BaseException as exc:
        leaf = _single(exc)
        if leaf is exc and (connected or not isinstance(exc, Exception)):
            raise
        if connected or not isinstance(leaf, Exception):
            raise leaf from None
        if isinstance(leaf, LibosError):
            raise leaf from None
        raise peer.broken or ToolFailed(
            f"mcp server {name} could not be started or did not shake hands: "
            f"{type(leaf).__name__}: {_short(leaf)}{_stderr(peer)}") from None
    if scope.cancelled_caught and not connected:
        raise peer.broken or LimitExceeded(
            f"mcp server {name} did not answer within {connect_deadline:g} s{_stderr(peer)}")


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (nurseries wrap what they
    carry), or the group itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _stderr(peer: McpPeer) -> str:
    tail = peer.stderr_tail.decode("utf-8", "replace").strip().splitlines()
    return f" (its stderr ends: {_short(tail[-1])})" if tail else ""


@asynccontextmanager
async def _stdio(peer: McpPeer, spec: McpServerSpec) -> AsyncIterator[tuple[Any, Any]]:
    """The server as a child process, its stdout read in bounded messages."""
    import anyio
    import mcp_types as types
    from mcp.shared.message import SessionMessage

    try:
        process = await trio.lowlevel.open_process(
            list(spec.command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=_environment(spec), cwd=spec.cwd,
            start_new_session=True)
    except OSError as exc:
        raise ToolFailed(f"mcp server {peer.name} could not be started: "
                         f"{type(exc).__name__}: {_short(exc)}") from None
    # Small buffers: a server that floods waits for the session (its pipe fills), never the
    # broker's memory.
    to_session, from_server = anyio.create_memory_object_stream[Any](BUFFERED)
    to_server, from_session = anyio.create_memory_object_stream[Any](BUFFERED)

    def fail(error: LibosError) -> None:
        peer.break_with(error)
        _kill(process)

    stdout_done = trio.Event()
    reading = trio.CancelScope()

    async def read_stdout() -> None:
        with reading:
            await _read_stdout()
        stdout_done.set()

    async def _read_stdout() -> None:
        buffer = bytearray()
        async with to_session:
            while True:
                chunk = await process.stdout.receive_some(CHUNK)
                if not chunk:
                    break
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[:end + 1]
                    peer.received += end + 1
                    if not line.strip():
                        continue
                    try:
                        message = types.jsonrpc_message_adapter.validate_json(
                            line, by_name=False)
                    except ValueError:
                        fail(ToolFailed(f"mcp server {peer.name} sent a line that is not "
                                        "JSON-RPC (the connection is closed)"))
                        return
                    try:
                        await to_session.send(SessionMessage(message))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the session is over (detached while the server floods)
                if len(buffer) > peer.max_message:
                    fail(LimitExceeded(f"mcp server {peer.name} sent a message of more than "
                                       f"{peer.max_message} bytes (the connection is closed)"))
                    return
            code = await process.wait()
            peer.break_with(ToolFailed(f"mcp server {peer.name} exited (status {code})"
                                       f"{_stderr(peer)}"))

    async def watch_exit() -> None:
        """A server that exits fails its calls at once, even when something it started still
        holds its stdout open (no end of file would ever come): what it wrote before exiting
        is read for a moment, then its stdout is given up."""
        code = await process.wait()
        peer.break_with(ToolFailed(f"mcp server {peer.name} exited (status {code})"
                                   f"{_stderr(peer)}"))
        _kill(process)  # what it left in its group, holding its pipes
        with trio.move_on_after(EXIT_GRACE):
            await stdout_done.wait()
        reading.cancel()

    async def read_stderr() -> None:
        while chunk := await process.stderr.receive_some(CHUNK):
            peer.stderr_tail = (peer.stderr_tail + chunk)[-MAX_STDERR:]

    async def write_stdin() -> None:
        async with from_session:
            async for message in from_session:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                try:
                    await process.stdin.send_all(data.encode() + b"\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stdout)
            nursery.start_soon(read_stderr)
            nursery.start_soon(watch_exit)
            nursery.start_soon(write_stdin)
            try:
                yield from_server, to_server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await _stop(process)


def _environment(spec: McpServerSpec) -> dict[str, str]:
    if spec.env is not None:
        return dict(spec.env)
    return {k: v for k, v in os.environ.items() if k in INHERITED}


def _kill(process: trio.Process) -> None:
    """Kill the server and whatever it started (its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def _stop(process: trio.Process) -> None:
    """Close its stdin, give it a moment to exit, then kill its group."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await process.stdin.aclose()
    with trio.move_on_after(2):
        await process.wait()
    _kill(process)
    await process.wait()


@asynccontextmanager
async def _http(peer: McpPeer, url: str) -> AsyncIterator[tuple[Any, Any]]:
    """Streamable HTTP, each response body and SSE event at most `max_message` bytes."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    limit = peer.max_message

    class Bounded(httpx2.AsyncByteStream):
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __aiter__(self) -> AsyncIterator[bytes]:
            seen = 0
            async for chunk in self.inner:
                seen += len(chunk)
                peer.received += len(chunk)
                if seen > limit:
                    peer.break_with(LimitExceeded(
                        f"mcp server {peer.name} sent a response of more than {limit} bytes "
                        "(the connection is closed)"))
                    raise httpx2.ReadError("response too large")
                yield chunk

        async def aclose(self) -> None:
            await self.inner.aclose()

    class BoundedTransport(httpx2.AsyncHTTPTransport):
        async def handle_async_request(self, request: Any) -> Any:
            response = await super().handle_async_request(request)
            response.stream = Bounded(response.stream)
            return response

    timeout = httpx2.Timeout(30.0, read=300.0)
    async with httpx2.AsyncClient(transport=BoundedTransport(), timeout=timeout) as client, \
            streamable_http_client(url, http_client=client, max_sse_event_size=limit) as streams:
        yield streams
