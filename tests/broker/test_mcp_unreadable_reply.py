"""A client's reply to a form (`elicitation/create`) that the SDK cannot read: it was dropped,
and the call waited for it forever, even once the request was answered elsewhere. Raw
JSON-RPC over the real stdio transport of `python -m broker.cli mcp` in a subprocess."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from broker.approvals.stored import answer_in_store
from broker.store import SQLiteStore
from tests.broker.test_mcp import audit, bounded, detail, server
from tests.broker.test_mcp_unreadable import _hang_up, _next, _request, _send, _start

# Past the SDK's parser (about 200 levels) but readable by Python's: the reply's id is read.
READABLE = 300
# Past every parser: no id can be read.
UNREADABLE = 100_000


def _reply(ident: Any, depth: int) -> bytes:
    deep = "[" * depth + "]" * depth
    return (f'{{"jsonrpc":"2.0","id":{json.dumps(ident)},"result":{{"action":"accept",'
            f'"content":{{"answer":{deep}}}}}}}').encode()


async def _until(proc: Any, buffer: bytearray, method: str) -> dict[str, Any]:
    while (message := await _next(proc, buffer)).get("method") != method:
        pass
    return message


async def form_asked(proc: Any, buffer: bytearray, path: str, data: str) -> dict[str, Any]:
    """A client that can take forms calls `write_file` (request 2), whose approval the
    server puts to it: the form's request."""
    await _send(proc, _request(1, "initialize", {
        "protocolVersion": "2025-11-25", "capabilities": {"elicitation": {"form": {}}},
        "clientInfo": {"name": "raw", "version": "1"}}))
    assert "result" in await _next(proc, buffer)
    await _send(proc, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    await _send(proc, _request(2, "tools/call", {
        "name": "write_file", "arguments": {"path": path, "data": data}}))
    return await _until(proc, buffer, "elicitation/create")


@pytest.mark.parametrize("depth", [READABLE, UNREADABLE])
@bounded
async def test_an_unreadable_reply_to_a_form_leaves_the_request_to_other_front_ends(
        tmp_path: Path, depth: int) -> None:
    """The client answers the form with a reply the SDK cannot read. Its id read: the form
    fails at once, on the record as `failed`; its id unreadable: the form waits no longer
    than the call. Either way the request stays pending, and a person approving it with the
    CLI (the legitimate neighbour) ends the call with its result."""
    db = tmp_path / "libos.db"
    proc = await _start(server(tmp_path))
    buffer = bytearray()
    try:
        form = await form_asked(proc, buffer, "/out/deep.txt", "deep")
        await _send(proc, _reply(form["id"], depth))

        if depth == READABLE:
            with trio.fail_after(30):
                while not [r for r in audit(tmp_path) if r["syscall"] == "approval.elicit"
                           and detail(r)["outcome"] == "failed"]:
                    await trio.sleep(0.05)
        [pending] = SQLiteStore(db, writer=False).list_approvals("pending")
        answer_in_store(SQLiteStore(db, writer=False), pending["id"], "once",
                        who="cli:test", now=time.time())
        while (result := await _next(proc, buffer)).get("id") != 2:
            pass
        assert json.loads(result["result"]["content"][0]["text"]) == 4
    finally:
        code = await _hang_up(proc)
    assert code == 0
    assert (tmp_path / "libos-fs" / "out" / "deep.txt").read_text() == "deep"
    outcomes = [detail(r) for r in audit(tmp_path) if r["syscall"] == "approval.elicit"]
    assert [o["outcome"] for o in outcomes] == [
        "failed" if depth == READABLE else "unanswered"]
    if depth == READABLE:
        assert "could not be read" in outcomes[0]["error"]
    [answer] = [detail(r) for r in audit(tmp_path) if r["syscall"] == "approval.answer"]
    assert answer["who"] == "cli:test" and answer["answer"] == "once"
