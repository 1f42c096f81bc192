"""`libos mcp`: the SDK's own client over stdio, against `python -m broker.cli mcp` in a
subprocess; both protocol eras (handshake 2025-11-25 and 2026-07-28)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from broker.kernel.approvals import answer_in_store
from broker.store import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
WORDCOUNT = (ROOT / "wasm-tools" / "examples" / "wordcount.wat").read_text(encoding="utf-8")
ASK_OUT = json.dumps({"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"})
CAPS = ["fs:/data/**:read,write", ASK_OUT, "tool:*:register,call"]
MODES = ("legacy", "auto")  # auto negotiates 2026-07-28 with this server


def image(tmp_path: Path) -> Path:
    path = tmp_path / "files.json"
    path.write_text(json.dumps({
        "name": "files",
        "tools": ["make_dir", "read_file", "write_file", "register_tool", "ask_human"],
        "needs": ["fs:/**:read,write", "tool:*:register,call", "human:*:ask"]}))
    (tmp_path / "libos-fs" / "out").mkdir(parents=True)
    return path


def server(tmp_path: Path, caps: list[str] = CAPS) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, cwd=str(ROOT),
        args=["-m", "broker.cli", "--db", str(tmp_path / "libos.db"), "mcp",
              "--image", str(image(tmp_path)), "--caps", *caps])


@pytest.mark.parametrize("mode", MODES)
async def test_a_question_is_put_to_the_clients_user(tmp_path: Path, mode: str) -> None:
    asked: list[Any] = []

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"answer": "blue"})

    async with Client(server(tmp_path, [*CAPS, "human:*:ask"]), mode=mode,
                      elicitation_callback=elicit) as client:
        answer = await client.call_tool("ask_human", {
            "question": "Which colour?", "choices": ["red", "blue"]})
        assert value_of(answer) == "blue"
        # A question whose answer needs a JSON Schema is not a form: it waits in the queue.
        with trio.move_on_after(1):
            await client.call_tool("ask_human", {
                "question": "Numbers?", "schema": {"type": "array"}})
    assert len(asked) == 1
    assert "Which colour?" in asked[0].message
    assert asked[0].requested_schema["properties"]["answer"]["enum"] == ["red", "blue"]


def error_of(result: Any) -> str | None:
    if not result.is_error:
        return None
    return json.loads(result.content[0].text)["error"]


def value_of(result: Any) -> Any:
    assert not result.is_error, result
    return json.loads(result.content[0].text)


@pytest.mark.parametrize("mode", MODES)
async def test_tools_calls_denials_elicited_approvals_and_audit(tmp_path: Path,
                                                                mode: str) -> None:
    asked: list[str] = []

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params.message)
        # The first request is approved once; any later one is declined.
        if len(asked) == 1:
            return types.ElicitResult(action="accept", content={"answer": "once"})
        return types.ElicitResult(action="decline")

    async with Client(server(tmp_path), mode=mode, elicitation_callback=elicit) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else "2026-07-28")
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert set(listed) == {"make_dir", "read_file", "write_file", "register_tool",
                               "ask_human"}
        assert listed["read_file"].input_schema["properties"]["path"]["type"] == "string"

        assert value_of(await client.call_tool("make_dir", {"path": "/data"})) is None
        assert value_of(await client.call_tool(
            "write_file", {"path": "/data/a.txt", "data": "two words"})) == 9
        assert value_of(await client.call_tool("read_file", {"path": "/data/a.txt"})) == (
            "two words")
        # Denied, unknown, bad arguments: typed tool errors, and the server carries on.
        assert error_of(await client.call_tool("read_file", {"path": "/etc/passwd"})) == (
            "NOT_CAPABLE")
        assert error_of(await client.call_tool("nope", {})) == "NOT_FOUND"
        assert error_of(await client.call_tool("write_file", {"path": 5})) == (
            "INVALID_ARGUMENT")
        # An `ask` capability: the client's user is asked; approved once, then declined.
        assert value_of(await client.call_tool(
            "write_file", {"path": "/out/report.txt", "data": "ok", "reason": "the report"}
        )) == 2
        assert error_of(await client.call_tool(
            "write_file", {"path": "/out/other.txt", "data": "no"})) == "APPROVAL_DENIED"
        assert len(asked) == 2
        assert "/out/report.txt" in asked[0] and "the report" in asked[0]

    store = SQLiteStore(tmp_path / "libos.db", writer=False)
    records = [r.to_json() for r in store.audit_records()]
    denied = [r for r in records if r["phase"] == "denied"]
    assert any(r["resource"] == "/etc/passwd" for r in denied)
    assert any(r["resource"] == "/out/other.txt" for r in denied)
    answers = [r for r in records if r["syscall"] == "approval.answer"]
    assert [json.loads(r["detail"])["answer"] if isinstance(r["detail"], str)
            else r["detail"]["answer"] for r in answers] == ["once", "deny"]
    assert any(r["phase"] == "outcome" and r["resource"] == "/out/report.txt"
               for r in records)
    calls = [r for r in records if r["syscall"] == "tool.call" and r["phase"] == "intent"]
    assert len(calls) >= 6


@pytest.mark.parametrize("mode", MODES)
async def test_register_tool_adds_a_tool_the_client_then_calls(tmp_path: Path,
                                                               mode: str) -> None:
    notices: list[str] = []

    async def on_message(message: Any) -> None:
        notices.append(str(getattr(message, "method", "")))

    async with Client(server(tmp_path), mode=mode, message_handler=on_message) as client:
        await client.call_tool("make_dir", {"path": "/data"})
        await client.call_tool("write_file", {"path": "/data/t.txt", "data": "a b c\nd\n"})

        async def register() -> Any:
            return value_of(await client.call_tool("register_tool", {
                "name": "wordcount", "lang": "wat", "source": WORDCOUNT,
                "description": "count words", "schema": {
                    "type": "object", "properties": {"path": {"type": "string"}},
                    "required": ["path"]}}))

        if mode == "legacy":  # a notification
            registered = await register()
            assert "notifications/tools/list_changed" in notices
        else:  # 2026-07-28: an event on a subscriptions/listen stream
            async with client.listen(tools_list_changed=True) as events:
                registered = await register()
                with trio.fail_after(10):
                    event = await events.__anext__()
            assert type(event).__name__ == "ToolsListChanged"
        assert registered["name"] == "wordcount"
        names = {t.name for t in (await client.list_tools()).tools}
        assert "wordcount" in names
        counted = value_of(await client.call_tool("wordcount", {"path": "/data/t.txt"}))
        assert counted == {"words": 4, "lines": 2, "bytes": 8}
        # A tool it may not read with: the tool's syscall is refused, typed.
        assert error_of(await client.call_tool("wordcount", {"path": "/etc/passwd"})) == (
            "NOT_CAPABLE")
        # Tool source that does not compile: a typed error, not a crash.
        assert error_of(await client.call_tool("register_tool", {
            "name": "broken", "lang": "wat", "source": "(module (func (export \"run\""})) == (
            "INVALID_ARGUMENT")
        assert error_of(await client.call_tool("register_tool", {
            "name": "ts", "lang": "cobol", "source": "x"})) == "INVALID_ARGUMENT"
        assert value_of(await client.call_tool("read_file", {"path": "/data/t.txt"}))


async def test_without_elicitation_the_request_waits_in_the_queue(tmp_path: Path) -> None:
    """A client that cannot elicit: the call waits; `libos approve` (here: the same store
    function it uses) answers it from another OS process."""
    db = tmp_path / "libos.db"
    async with Client(server(tmp_path), mode="legacy") as client:
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def call() -> None:
                results.append(await client.call_tool(
                    "write_file", {"path": "/out/queued.txt", "data": "queued"}))

            nursery.start_soon(call)
            with trio.fail_after(20):
                while True:
                    await trio.sleep(0.05)
                    pending = SQLiteStore(db, writer=False).list_approvals("pending")
                    if pending:
                        break
            answer_in_store(SQLiteStore(db, writer=False), pending[0]["id"], "once",
                            who="cli:test", now=time.time())
        assert value_of(results[0]) == 6


async def test_approved_always_is_a_standing_grant(tmp_path: Path) -> None:
    asked: list[str] = []

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "always"})

    async with Client(server(tmp_path), mode="auto", elicitation_callback=elicit) as client:
        for n in range(3):
            assert value_of(await client.call_tool(
                "write_file", {"path": "/out/log.txt", "data": "x" * n})) == n
    assert len(asked) == 1
