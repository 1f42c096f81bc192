"""`libos mcp` answers a line the SDK cannot read (it dropped it, and the client waited
forever), then serves the next request: raw JSON-RPC over the real stdio transport of
`python -m broker.cli mcp` in a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import trio

from tests.broker.test_mcp import server
from tests.conftest import python_server

DEEP = 100_000


async def _send(proc: trio.Process, line: bytes) -> None:
    assert proc.stdin is not None
    await proc.stdin.send_all(line + b"\n")


async def _next(proc: trio.Process, buffer: bytearray) -> dict[str, Any]:
    """The next message the server writes (a guard fails the test if none comes)."""
    assert proc.stdout is not None
    with trio.fail_after(60):
        while b"\n" not in buffer:
            chunk = await proc.stdout.receive_some(65536)
            assert chunk, "the server hung up"
            buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


def _request(ident: int, method: str, params: Any = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode()


async def _start(params: Any) -> trio.Process:
    return await trio.lowlevel.open_process(
        [params.command, *params.args], cwd=params.cwd, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE)


async def _initialize(proc: trio.Process, buffer: bytearray) -> None:
    await _send(proc, _request(1, "initialize", {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "1"}}))
    assert "result" in await _next(proc, buffer)
    await _send(proc, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')


async def _hang_up(proc: trio.Process) -> int:
    assert proc.stdin is not None
    await proc.stdin.aclose()
    with trio.move_on_after(30):
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    return proc.returncode


async def test_unreadable_lines_are_answered_and_serving_goes_on(tmp_path: Path) -> None:
    proc = await _start(server(tmp_path))
    buffer = bytearray()
    try:
        await _initialize(proc, buffer)

        # Nested past every parser: no id can be read, so the answer is on id null.
        await _send(proc, b"[" * DEEP + b"]" * DEEP)
        refused = await _next(proc, buffer)
        assert refused["id"] is None and refused["error"]["code"] == -32700

        # Past the SDK's parser (about 200 levels) but readable: answered on its own id.
        deep = "[" * 300 + "]" * 300
        await _send(proc, ('{"jsonrpc":"2.0","id":7,"method":"tools/call","params":'
                           '{"name":"read_file","arguments":{"path":' + deep + '}}}').encode())
        refused = await _next(proc, buffer)
        assert refused["id"] == 7 and refused["error"]["code"] == -32600

        # Not JSON at all, and JSON that is no message.
        await _send(proc, b"{not json")
        assert (await _next(proc, buffer))["error"]["code"] == -32700
        await _send(proc, b'{"jsonrpc":"2.0","id":8}')
        refused = await _next(proc, buffer)
        assert refused["id"] == 8 and refused["error"]["code"] == -32600
        # A notification too deep to read is not answered: the next reply is tools/list's.
        await _send(proc, ('{"jsonrpc":"2.0","method":"notifications/progress","params":'
                           + deep + "}").encode())

        await _send(proc, _request(9, "tools/list"))
        listed = await _next(proc, buffer)
        assert listed["id"] == 9
        assert "read_file" in [t["name"] for t in listed["result"]["tools"]]
    finally:
        code = await _hang_up(proc)
    assert code == 0


async def test_a_broker_that_cannot_serve_answers_an_unreadable_line_too(
        tmp_path: Path) -> None:
    """`libos mcp` refusing to serve (no such process) answers each request with the typed
    error; a line too deep to read raised out of it, untyped."""
    proc = await _start(python_server("-m", "broker.cli", "--db", str(tmp_path / "libos.db"),
                                      "mcp", "--pid", "99"))
    buffer = bytearray()
    try:
        await _send(proc, b"[" * DEEP + b"]" * DEEP)
        refused = await _next(proc, buffer)
        assert refused["id"] is None and refused["error"]["code"] == -32700
        assert refused["error"]["message"].startswith("libos: NOT_FOUND")
        await _send(proc, _request(1, "tools/list"))
        refused = await _next(proc, buffer)
        assert refused["id"] == 1 and refused["error"]["message"].startswith("libos: NOT_FOUND")
    finally:
        code = await _hang_up(proc)
    assert code == 2


async def test_an_id_that_cannot_be_written_back_is_not_echoed(tmp_path: Path) -> None:
    """A request whose id holds a lone surrogate (JSON's "\\ud800": Python's parser reads
    it, the SDK's refuses the line) is answered on id null: echoing the id made the SDK's
    writer fail to encode the reply, which ended `libos mcp` with a traceback."""
    proc = await _start(server(tmp_path))
    buffer = bytearray()
    try:
        await _initialize(proc, buffer)
        for method in (b'"tools/list"', b"5"):
            await _send(proc, b'{"jsonrpc":"2.0","id":"\\ud800","method":' + method + b"}")
            refused = await _next(proc, buffer)
            assert refused["id"] is None and refused["error"]["code"] == -32600
        # A neighbour: a string id that encodes is still answered on its own id.
        await _send(proc, b'{"jsonrpc":"2.0","id":"\\u00e9","method":5}')
        refused = await _next(proc, buffer)
        assert refused["id"] == "\u00e9" and refused["error"]["code"] == -32600
        await _send(proc, _request(9, "tools/list"))
        assert (await _next(proc, buffer))["id"] == 9
    finally:
        code = await _hang_up(proc)
    assert code == 0
