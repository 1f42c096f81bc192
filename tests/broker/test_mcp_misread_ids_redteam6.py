"""Red team 6: a line the SDK refuses is answered on the id of the message itself, never on an
id found inside one of its fields.

`mcp_unreadable._message_of` took the first object among the inputs of the SDK's validation
errors for "the message". When the message's own `id` is an object, the error about that id
comes first, so its value was taken for the message: a client's malformed request whose id
was `{"id": N, "result": {}}` was read as a reply to the server's request N (a form in
flight) and failed that form (`failed` on the record) while the request itself went
unanswered; one whose id was `{"id": 7, "method": "x"}` was answered on id 7, another
request's id. Severity: low (the client can only fail its own session's forms, which fail
closed: the approval stays pending for the other front ends), but the wrong id is answered.
Raw JSON-RPC over the real stdio transport of `python -m broker.cli mcp` in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from tests.broker.test_mcp import audit, bounded, detail, server
from tests.broker.test_mcp_unreadable import _hang_up, _next, _send, _start
from tests.broker.test_mcp_unreadable_reply import form_asked


def _misread(ident: Any) -> bytes:
    """A request (it has a method) that no JSON-RPC member takes: its version is wrong and
    its id an object, which holds fields of another message."""
    return json.dumps({"jsonrpc": "1.0", "id": ident, "method": "ping"}).encode()


@bounded
async def test_a_request_whose_id_is_an_object_fails_no_form_and_is_answered_on_null(
        tmp_path: Path) -> None:
    proc = await _start(server(tmp_path))
    buffer = bytearray()
    try:
        form = await form_asked(proc, buffer, "/out/ids.txt", "ids")

        # Looks like a reply to the form: it must not fail the form.
        await _send(proc, _misread({"id": form["id"], "result": {}}))
        refused = await _next(proc, buffer)
        assert refused.get("id") is None and refused["error"]["code"] == -32600
        # Names request 7 inside: answered on null, never on 7.
        await _send(proc, _misread({"id": 7, "method": "tools/list"}))
        refused = await _next(proc, buffer)
        assert refused.get("id") is None and refused["error"]["code"] == -32600

        # The legitimate neighbour: the client's real reply to the form still approves.
        await _send(proc, json.dumps({"jsonrpc": "2.0", "id": form["id"], "result": {
            "action": "accept", "content": {"answer": "once"}}}).encode())
        with trio.fail_after(60):
            while (result := await _next(proc, buffer)).get("id") != 2:
                pass
        assert json.loads(result["result"]["content"][0]["text"]) == 3
    finally:
        code = await _hang_up(proc)
    assert code == 0
    assert (tmp_path / "libos-fs" / "out" / "ids.txt").read_text() == "ids"
    outcomes = [detail(r)["outcome"] for r in audit(tmp_path)
                if r["syscall"] == "approval.elicit"]
    assert outcomes == ["accept"]
