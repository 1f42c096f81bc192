"""`libos mcp` that lasts (issue 13): sessions come and go over one process (`--keep`, then
`--pid N`) and its run-time tools stay; a second broker on the store is refused with a message
the client shows; `listChanged` is advertised and every change of the table is announced;
re-registering a name is `CONFLICT` unless the caller asks to replace it. The SDK's own client
against `python -m broker.cli mcp` in a subprocess, and a real kernel in-process."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import Client
from mcp.shared.exceptions import MCPError

from broker import AgentImage, Kernel
from broker.mcp_server import LibosMCP
from broker.store import SQLiteStore
from tests.broker.test_mcp import CAPS, MODES, WORDCOUNT, error_of, image, value_of
from tests.conftest import python_server

WORDS = {"name": "wordcount", "lang": "wat", "source": WORDCOUNT, "schema": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}


def cli(tmp_path: Path, *args: str) -> Any:
    return python_server("-m", "broker.cli", "--db", str(tmp_path / "libos.db"), "mcp", *args)


def state(tmp_path: Path, pid: int) -> str:
    store = SQLiteStore(tmp_path / "libos.db", writer=False)
    try:
        return str(store.get_process(pid)["state"])
    finally:
        store.close()


async def refusal(server: Any, mode: str) -> str:
    """The error a client gets from a server that cannot serve (its task groups wrap it)."""
    try:
        async with Client(server, mode=mode):
            pass
    except BaseException as exc:
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        assert isinstance(exc, MCPError), repr(exc)
        return str(exc)
    raise AssertionError("the client connected")


@pytest.mark.parametrize("mode", MODES)
async def test_sessions_come_and_go_and_the_process_and_its_tools_stay(
        tmp_path: Path, mode: str) -> None:
    first = cli(tmp_path, "--image", str(image(tmp_path)), "--keep", "--caps", *CAPS)
    async with Client(first, mode=mode) as client:
        assert "process 1 " in (client.instructions or "")
        await client.call_tool("make_dir", {"path": "/data"})
        await client.call_tool("write_file", {"path": "/data/t.txt", "data": "a b c\n"})
        assert value_of(await client.call_tool("register_tool", WORDS))["name"] == "wordcount"
    assert state(tmp_path, 1) != "killed"  # kept: the session ended, the process did not
    for _ in range(2):  # session after session over the same process
        async with Client(cli(tmp_path, "--pid", "1"), mode=mode) as client:
            listed = {t.name for t in (await client.list_tools()).tools}
            assert "wordcount" in listed  # registered by an earlier session
            assert value_of(await client.call_tool("wordcount", {"path": "/data/t.txt"})) == {
                "words": 3, "lines": 1, "bytes": 6}
        assert state(tmp_path, 1) != "killed"


@pytest.mark.parametrize("mode", MODES)
async def test_registering_a_taken_name_is_conflict_unless_asked_to_replace(
        tmp_path: Path, mode: str) -> None:
    async with Client(cli(tmp_path, "--image", str(image(tmp_path)), "--caps", *CAPS),
                      mode=mode) as client:
        assert value_of(await client.call_tool("register_tool", WORDS))
        assert error_of(await client.call_tool("register_tool", WORDS)) == "CONFLICT"
        assert error_of(await client.call_tool("register_tool", {
            **WORDS, "name": "read_file"})) == "CONFLICT"  # a builtin, even when asked
        replaced = value_of(await client.call_tool("register_tool", {
            **WORDS, "description": "counts", "replace": True}))
        assert replaced["name"] == "wordcount"
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert listed["wordcount"].description == "counts"


@pytest.mark.parametrize("mode", MODES)
async def test_a_second_broker_on_the_store_is_refused_with_a_message(
        tmp_path: Path, mode: str) -> None:
    async with Client(cli(tmp_path, "--image", str(image(tmp_path)), "--caps", *CAPS),
                      mode=mode) as first:
        await first.list_tools()
        refused = await refusal(cli(tmp_path, "--pid", "1"), mode)
        assert refused.startswith("libos: CONFLICT: another broker has")
        # The first broker serves on.
        assert error_of(await first.call_tool("make_dir", {"path": "/data"})) is None
    assert (await refusal(cli(tmp_path, "--pid", "99"), mode)).startswith("libos: NOT_FOUND")
    assert await refusal(cli(tmp_path, "--pid", "1"), mode) == (
        "libos: CONFLICT: process 1 has killed")  # its session ended: it was not --keep


async def test_list_changed_is_advertised_and_true(tmp_path: Path) -> None:
    async with Client(cli(tmp_path, "--image", str(image(tmp_path)), "--caps", *CAPS),
                      mode="legacy") as client:
        assert client.server_capabilities.tools.list_changed is True


async def test_a_change_of_the_table_made_elsewhere_is_announced(tmp_path: Path) -> None:
    """The embedder takes a host tool away while a client is connected: the client is told
    (and is told nothing while nothing changes)."""
    notices: list[float] = []

    async def on_message(message: Any) -> None:
        if getattr(message, "method", "") == "notifications/tools/list_changed":
            notices.append(trio.current_time())

    def ping(text: str) -> str:
        return text

    async with Kernel.open(tmp_path / "libos.db") as kernel:
        kernel.host_tool(ping, kind="echo", right="say")
        await kernel.register_image(AgentImage("pinger", tools=("ping",),
                                               needs=["echo:*:say"]))
        pid = kernel.spawn("pinger", caps=["echo:*:say"])
        async with trio.open_nursery() as nursery:
            mcp = LibosMCP(kernel, pid, nursery)
            server = mcp.server()
            nursery.start_soon(mcp.watch_tools)
            async with Client(server, mode="legacy", message_handler=on_message) as client:
                assert [t.name for t in (await client.list_tools()).tools] == ["ping"]
                await trio.sleep(2.5)
                assert notices == []  # nothing changed
                kernel.host_tools.remove("ping")
                with trio.fail_after(10):
                    while not notices:
                        await trio.sleep(0.05)
                assert (await client.list_tools()).tools == []
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("mode", MODES)
async def test_libos_mcp_attaches_an_external_server_behind_capabilities(
        tmp_path: Path, mode: str) -> None:
    """`--attach NAME=COMMAND`: libos between an MCP client and another MCP server, each call
    under the process's `mcp:` capabilities and on the record."""
    spec = tmp_path / "relay.json"
    spec.write_text(json.dumps({"name": "relay", "tools": ["peer.echo", "peer.add"],
                                "needs": ["mcp:peer/*:call"]}))
    peer = f"peer={sys.executable} -m tests.broker.providers.mcp_peer_server stdio"
    async with Client(cli(tmp_path, "--attach", peer, "--image", str(spec), "--caps",
                          "mcp:peer/echo:call"), mode=mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"peer.echo", "peer.add"}
        assert value_of(await client.call_tool("peer.echo", {"text": "via libos"})) == {
            "result": "via libos"}
        assert error_of(await client.call_tool("peer.add", {"a": 1, "b": 2})) == "NOT_CAPABLE"
    store = SQLiteStore(tmp_path / "libos.db", writer=False)
    try:
        records = [r.to_json() for r in store.audit_records()]
        phases = [(r["syscall"], r["phase"]) for r in records
                  if r["syscall"].startswith(("host.peer.", "mcp."))]
    finally:
        store.close()
    assert phases == [("mcp.attach", "admin"), ("host.peer.echo", "intent"),
                      ("host.peer.echo", "outcome"), ("host.peer.add", "denied"),
                      ("mcp.detach", "admin")]
    missing = await refusal(cli(tmp_path, "--attach", "gone=/nonexistent/server", "--image",
                                str(spec)), mode)
    assert missing.startswith("libos: TOOL_FAILED: mcp server gone could not be started")


async def test_a_result_too_long_to_send_whole_is_sent_cut_not_lost(tmp_path: Path) -> None:
    """A dict result whose JSON passes the result bound (control characters take six each)
    is sent cut, with the note that says so, as text: not an error for a call that ran."""
    spec = tmp_path / "relay.json"
    spec.write_text(json.dumps({"name": "relay", "tools": ["peer.echo"],
                                "needs": ["mcp:peer/*:call"]}))
    peer = f"peer={sys.executable} -m tests.broker.providers.mcp_peer_server stdio"
    async with Client(cli(tmp_path, "--attach", peer, "--image", str(spec)),
                      mode="legacy") as client:
        result = await client.call_tool("peer.echo", {"text": "\x01" * 200_000})
        assert not result.is_error, result.content[0].text[:300]
        assert result.structured_content is None
        text = result.content[0].text
        assert text.startswith('{"result": "\\u0001')
        assert text.endswith("[cut: 1200014 characters in all]")
        assert value_of(await client.call_tool("peer.echo", {"text": "small"})) == {
            "result": "small"}
    store = SQLiteStore(tmp_path / "libos.db", writer=False)
    try:
        outcomes = [r["detail"] for r in (s.to_json() for s in store.audit_records())
                    if r["syscall"] == "host.peer.echo" and r["phase"] == "outcome"]
    finally:
        store.close()
    assert [o.get("error") for o in outcomes] == [None, None]
