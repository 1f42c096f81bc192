"""A reply `libos mcp` cannot write (text UTF-8 cannot encode): the SDK's writer task ended on
it, and the server stopped writing but kept its stdout open, so the client waited forever.
It is answered with a typed JSON-RPC error on the same id, said on stderr, and the next
request is served. Raw JSON-RPC over the real stdio of the CLI in a subprocess, the fault
injected where the reply is built (`tests.broker.mcp_unwritable_server`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from tests.broker.test_mcp import image
from tests.broker.test_mcp_unreadable import _hang_up, _initialize, _next, _request, _send
from tests.conftest import python_server


async def test_a_reply_that_cannot_be_written_is_answered_typed_and_serving_goes_on(
        tmp_path: Path) -> None:
    (tmp_path / "libos-fs" / "data").mkdir(parents=True, exist_ok=True)
    params = python_server("-m", "tests.broker.mcp_unwritable_server", "--db",
                           str(tmp_path / "libos.db"), "mcp", "--image", str(image(tmp_path)),
                           "--caps", "fs:/data/**:read,write")
    (tmp_path / "libos-fs" / "data" / "unwritable").write_text("unwritable")
    (tmp_path / "libos-fs" / "data" / "plain").write_text("plain")
    proc = await trio.lowlevel.open_process(
        [params.command, *params.args], cwd=params.cwd, env=params.env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buffer = bytearray()
    try:
        await _initialize(proc, buffer)
        await _send(proc, _request(2, "tools/call", {
            "name": "read_file", "arguments": {"path": "/data/unwritable"}}))
        refused = await _next(proc, buffer)
        assert refused["id"] == 2 and refused["error"]["code"] == -32603
        assert refused["error"]["message"].startswith("libos: PROTOCOL_ERROR")
        # The neighbour: the next call is served as usual.
        await _send(proc, _request(3, "tools/call", {
            "name": "read_file", "arguments": {"path": "/data/plain"}}))
        served = await _next(proc, buffer)
        assert served["id"] == 3 and "plain" in served["result"]["content"][0]["text"]
    finally:
        code = await _hang_up(proc)
    assert proc.stderr is not None
    stderr = b""
    with trio.move_on_after(10):
        while chunk := await proc.stderr.receive_some(65536):
            stderr += chunk
    assert code == 0
    assert b"libos mcp: PROTOCOL_ERROR: a message could not be written" in stderr
