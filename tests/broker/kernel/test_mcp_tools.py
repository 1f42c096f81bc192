"""An external MCP server's tools as libos tools (issue 13, "MCP client"): a real kernel over
real SQLite, and a real MCP server in a subprocess (`tests/broker/providers/mcp_peer_server`,
the SDK's own server). Each call is checked, approvable and audited; a hostile server (its
schemas, a huge result, dying or hanging mid-call, nonsense on its stdout) is a typed error
for the caller, on the record, while a neighbour keeps working."""

from __future__ import annotations

import functools
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import (
    AgentImage,
    Conflict,
    Kernel,
    LimitExceeded,
    NotCapable,
    NotFound,
    ToolFailed,
)
from broker.errors import InvalidArgument
from tests.conftest import bare_env

ROOT = Path(__file__).resolve().parents[3]
HONEST = ("echo", "add", "pattern")


def server(*flags: str) -> dict[str, Any]:
    """How to start the test server: this Python, from the repository, a bare environment."""
    return {"command": [sys.executable, "-m", "tests.broker.providers.mcp_peer_server",
                        "stdio", *flags],
            "env": bare_env(), "cwd": str(ROOT)}


@asynccontextmanager
async def attached(kernel: Kernel, name: str = "peer", *flags: str, caps: tuple[Any, ...] = (
        "mcp:peer/*:call",), deadline: float = 30) -> AsyncIterator[tuple[Any, int]]:
    """The server attached, and a process of an image that lists all its tools."""
    async with kernel.attach_mcp(name, **server(*flags), deadline=deadline) as peer:
        await kernel.register_image(AgentImage(f"{name}-user", tools=tuple(peer.tools),
                                               needs=[f"mcp:{name}/*:call"]))
        yield peer, kernel.spawn(f"{name}-user", caps=list(caps))


def records(kernel: Kernel, syscall: str, phase: str | None = None) -> list[dict[str, Any]]:
    return [r for r in kernel.audit() if r["syscall"] == syscall
            and (phase is None or r["phase"] == phase)]


async def test_a_servers_tools_are_capability_checked_and_audited_calls(
        kernel: Kernel) -> None:
    async with attached(kernel, caps=("mcp:peer/echo:call",)) as (peer, pid):
        assert {"peer.echo", "peer.add", "peer.hang"} <= set(peer.tools)
        listed = {t["name"]: t for t in kernel.list_tools(pid)}
        assert listed["peer.add"]["schema"]["required"] == ["a", "b"]  # the server's schema
        assert listed["peer.echo"]["description"] == "Say it back."
        assert await kernel.call_tool(pid, "peer.echo", {"text": "hi"}) == {"result": "hi"}
        with pytest.raises(NotCapable):  # a capability for echo covers no other tool
            await kernel.call_tool(pid, "peer.add", {"a": 1, "b": 2})
        with pytest.raises(InvalidArgument):  # the server's schema, checked by libos
            await kernel.call_tool(pid, "peer.echo", {"text": 3})
    assert [r["phase"] for r in records(kernel, "host.peer.echo")] == ["intent", "outcome"]
    [denied] = records(kernel, "host.peer.add")
    assert denied["phase"] == "denied" and denied["resource"] == "peer/add"
    [attach] = records(kernel, "mcp.attach")
    assert "peer.echo" in attach["detail"]["tools"] and attach["detail"]["refused"] == {}
    assert records(kernel, "mcp.detach")
    with pytest.raises(NotFound):  # detached: the tools are gone with the server
        await kernel.call_tool(pid, "peer.echo", {"text": "hi"})
    assert kernel.verify_audit()[1] == []


async def test_an_ask_capability_puts_the_exact_call_to_a_person(kernel: Kernel) -> None:
    ask = {"kind": "mcp", "scope": "peer/*", "rights": ["call"], "effect": "ask"}
    async with attached(kernel, caps=(ask,)) as (_, pid), trio.open_nursery() as nursery:
        results: list[Any] = []

        async def call() -> None:
            results.append(await kernel.call_tool(pid, "peer.add", {"a": 2, "b": 3}))

        nursery.start_soon(call)
        with trio.fail_after(10):
            while not kernel.approvals():
                await trio.sleep(0.02)
        [request] = kernel.approvals()
        assert request["resource"] == "peer/add" and request["args"] == {"a": 2, "b": 3}
        assert results == []  # nothing reached the server before the answer
        kernel.approve(request["id"])
    assert results == [{"sum": 5}]


async def test_hostile_schemas_are_refused_and_on_the_record(kernel: Kernel) -> None:
    async with attached(kernel, "peer", "--hostile-schemas") as (peer, pid):
        assert set(peer.refused) == {"remote_ref", "backreference"}
        assert "is not local" in peer.refused["remote_ref"]
        assert "RE2" in peer.refused["backreference"]
        rejected = {r["resource"]: r["detail"] for r in records(kernel, "host.register",
                                                                 "rejected")}
        assert rejected["peer.remote_ref"]["error"] == "INVALID_ARGUMENT"
        assert rejected["peer.backreference"]["error"] == "INVALID_ARGUMENT"
        [attach] = records(kernel, "mcp.attach")
        assert set(attach["detail"]["refused"]) == {"remote_ref", "backreference"}
        with pytest.raises(NotFound):
            await kernel.call_tool(pid, "peer.remote_ref", {"x": 1})
        # A pattern that backtracks catastrophically in Python's `re` runs in RE2: at once.
        started = time.monotonic()
        with pytest.raises(InvalidArgument, match="must match pattern"):
            await kernel.call_tool(pid, "peer.pattern", {"text": "a" * 50_000 + "!"})
        assert time.monotonic() - started < 5
        # The neighbours registered from the same list work.
        assert await kernel.call_tool(pid, "peer.pattern", {"text": "aaa"}) == {
            "result": "matched"}
        assert await kernel.call_tool(pid, "peer.echo", {"text": "ok"}) == {"result": "ok"}


@asynccontextmanager
async def two_servers(kernel: Kernel, deadline: float = 30) -> AsyncIterator[tuple[int, int]]:
    """Two servers, a process for each: the neighbour is the other server's process."""
    async with attached(kernel, "peer", deadline=deadline) as (_, pid), \
            attached(kernel, "other", caps=("mcp:other/*:call",)) as (_, neighbour):
        yield pid, neighbour


async def _fails(kernel: Kernel, pid: int, tool: str, args: dict[str, Any],
                 error: type[Exception], match: str) -> dict[str, Any]:
    started = time.monotonic()
    with pytest.raises(error, match=match):
        await kernel.call_tool(pid, f"peer.{tool}", args)
    assert time.monotonic() - started < 30
    [outcome] = records(kernel, f"host.peer.{tool}", "outcome")
    assert outcome["detail"]["error"] == error.__name__.replace(
        "Exceeded", "_EXCEEDED").replace("Failed", "_FAILED").upper()
    return outcome


async def test_a_100_mb_result_is_limit_exceeded_and_the_broker_keeps_serving(
        kernel: Kernel) -> None:
    async with two_servers(kernel) as (pid, neighbour):
        outcome = await _fails(kernel, pid, "huge", {"megabytes": 100}, LimitExceeded,
                               "more than 4194304 bytes")
        assert len(str(outcome["detail"])) < 1000
        # That server is cut off (it was killed); each later call says why, at once.
        with pytest.raises(LimitExceeded):
            await kernel.call_tool(pid, "peer.echo", {"text": "again"})
        assert await kernel.call_tool(neighbour, "other.echo", {"text": "n"}) == {"result": "n"}


async def test_a_server_killed_mid_call_is_tool_failed(kernel: Kernel) -> None:
    async with two_servers(kernel) as (pid, neighbour):
        await _fails(kernel, pid, "crash", {}, ToolFailed, "mcp server peer")
        assert await kernel.call_tool(neighbour, "other.add", {"a": 1, "b": 1}) == {"sum": 2}


async def test_a_server_that_never_answers_is_limit_exceeded_at_its_deadline(
        kernel: Kernel) -> None:
    async with two_servers(kernel, deadline=3) as (pid, neighbour):
        await _fails(kernel, pid, "hang", {}, LimitExceeded, "deadline of 3 s")
        # The same server answers its other calls; so does the other one.
        assert await kernel.call_tool(pid, "peer.echo", {"text": "a"}) == {"result": "a"}
        assert await kernel.call_tool(neighbour, "other.echo", {"text": "b"}) == {
            "result": "b"}


async def test_an_invalid_result_or_nonsense_on_the_wire_is_tool_failed(
        kernel: Kernel) -> None:
    raw = {"command": [sys.executable, "-m", "tests.broker.providers.mcp_raw_server"],
           "env": bare_env(), "cwd": str(ROOT)}
    async with kernel.attach_mcp("raw", **raw, deadline=30) as peer, \
            attached(kernel, "other", caps=("mcp:other/*:call",)) as (_, neighbour):
        await kernel.register_image(AgentImage("raw-user", tools=tuple(peer.tools),
                                               needs=["mcp:raw/*:call"]))
        pid = kernel.spawn("raw-user", caps=["mcp:raw/*:call"])
        assert await kernel.call_tool(pid, "raw.echo", {"x": 1}) == '{"x": 1}'
        with pytest.raises(ToolFailed, match="invalid result"):
            await kernel.call_tool(pid, "raw.invalid", {})
        assert await kernel.call_tool(pid, "raw.echo", {"x": 2}) == '{"x": 2}'  # still fine
        with pytest.raises(ToolFailed, match="not JSON-RPC"):
            await kernel.call_tool(pid, "raw.garbage", {})
        assert peer.peer.broken is not None  # a server that breaks the protocol is cut off
        assert await kernel.call_tool(neighbour, "other.echo", {"text": "c"}) == {
            "result": "c"}
    errors = [r["detail"]["error"] for r in records(kernel, "host.raw.invalid", "outcome")
              + records(kernel, "host.raw.garbage", "outcome")]
    assert errors == ["TOOL_FAILED", "TOOL_FAILED"]


async def test_a_server_that_never_shakes_hands_is_refused_on_the_record(
        kernel: Kernel) -> None:
    silent = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = time.monotonic()
    with pytest.raises(LimitExceeded, match="did not answer within 1 s"):
        async with kernel.attach_mcp("silent", command=silent, env=bare_env(),
                                     connect_deadline=1):
            pass
    assert time.monotonic() - started < 10
    [rejected] = records(kernel, "mcp.attach", "rejected")
    assert rejected["resource"] == "silent" and rejected["detail"]["error"] == "LIMIT_EXCEEDED"
    missing = ["/nonexistent/mcp-server"]
    with pytest.raises(ToolFailed, match="could not be started"):
        async with kernel.attach_mcp("missing", command=missing, env=bare_env()):
            pass


async def test_a_server_over_streamable_http_on_loopback(kernel: Kernel) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tests.broker.providers.mcp_peer_server", "http", str(port)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(
            trio.run_process, command, env=bare_env(), cwd=str(ROOT), check=False,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with trio.fail_after(30):  # until it listens
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"
        async with kernel.attach_mcp("web", url=url, deadline=10) as peer:
            await kernel.register_image(AgentImage("web-user", tools=tuple(peer.tools),
                                                   needs=["mcp:web/*:call"]))
            pid = kernel.spawn("web-user", caps=["mcp:web/echo:call", "mcp:web/huge:call"])
            assert await kernel.call_tool(pid, "web.echo", {"text": "over http"}) == {
                "result": "over http"}
            with pytest.raises(NotCapable):
                await kernel.call_tool(pid, "web.add", {"a": 1, "b": 2})
            with pytest.raises(LimitExceeded, match="more than"):
                await kernel.call_tool(pid, "web.huge", {"megabytes": 5})
        [attach] = records(kernel, "mcp.attach")
        assert attach["detail"]["server"] == url
        nursery.cancel_scope.cancel()  # the server process is killed


async def test_a_servers_results_are_untrusted_data(kernel: Kernel) -> None:
    """What another server says carries `untrusted` (unless the embedder says otherwise): a
    capability that bounds untrusted data refuses a write after it, a neighbour that never
    heard the server still writes."""
    export = {"kind": "fs", "scope": "/data/**", "rights": ["read", "write"],
              "flows": {"untrusted": "deny"}}
    Path(kernel.fs.root, "data").mkdir()  # type: ignore[attr-defined]
    async with kernel.attach_mcp("peer", **server()):
        await kernel.register_image(AgentImage("writer", tools=("peer.echo", "write_file"),
                                               needs=["mcp:peer/*:call", "fs:/data/**:read,write"]))
        pid = kernel.spawn("writer", caps=["mcp:peer/*:call", export])
        clean = kernel.spawn("writer", caps=[export])
        assert await kernel.call_tool(pid, "peer.echo", {"text": "rm -rf /"}) == {
            "result": "rm -rf /"}
        assert kernel.process(pid).label == {"untrusted"}
        with pytest.raises(NotCapable, match="untrusted"):
            await kernel.call_tool(pid, "write_file", {"path": "/data/cmd", "data": "rm -rf /"})
        assert await kernel.call_tool(clean, "write_file", {"path": "/data/ok", "data": "x"})
    [denied] = [r for r in records(kernel, "fs.write", "denied") if r["pid"] == pid]
    assert denied["detail"]["labels"] == ["untrusted"]
    assert not Path(kernel.fs.root, "data", "cmd").exists()  # type: ignore[attr-defined]


RAW = {"command": [sys.executable, "-m", "tests.broker.providers.mcp_raw_server"],
       "env": bare_env(), "cwd": str(ROOT)}


@pytest.mark.parametrize("tool", ["orphan", "escape"])
async def test_a_server_that_exits_leaving_a_child_on_its_stdout_fails_its_call_at_once(
        kernel: Kernel, tool: str) -> None:
    # The server exits mid-call; a child it forked (in its group, or escaped from it with
    # setsid) keeps its stdout open, so no end of file comes. The call fails at once, not at
    # its deadline, and so does every later call to that server.
    async with kernel.attach_mcp("raw", **RAW, deadline=30) as peer, \
            attached(kernel, "other", caps=("mcp:other/*:call",)) as (_, neighbour):
        await kernel.register_image(AgentImage("raw-user", tools=tuple(peer.tools),
                                               needs=["mcp:raw/*:call"]))
        pid = kernel.spawn("raw-user", caps=["mcp:raw/*:call"])
        assert await kernel.call_tool(pid, "raw.echo", {"x": 1}) == '{"x": 1}'
        started = time.monotonic()
        with pytest.raises(ToolFailed, match=r"mcp server raw exited \(status 3\)"):
            await kernel.call_tool(pid, f"raw.{tool}", {})
        with pytest.raises(ToolFailed, match="exited"):
            await kernel.call_tool(pid, "raw.echo", {"x": 2})
        assert time.monotonic() - started < 10  # the deadline is 30 s
        assert await kernel.call_tool(neighbour, "other.echo", {"text": "n"}) == {"result": "n"}
    [outcome] = records(kernel, f"host.raw.{tool}", "outcome")
    assert outcome["detail"]["error"] == "TOOL_FAILED"
    [detach] = [r for r in records(kernel, "mcp.detach") if r["resource"] == "raw"]
    assert detach["detail"]["broken"]["code"] == "TOOL_FAILED"
    # Its tools claim readOnlyHint: not believed, so a call cut off by a crash is reported
    # `outcome unknown`, never run again by recovery.
    registered = [r for r in records(kernel, "host.register", "admin")
                  if r["resource"] == f"raw.{tool}" and "kind" in r["detail"]]
    assert [r["detail"]["read_only"] for r in registered] == [False]


async def test_a_server_flooding_notifications_is_detached_cleanly(kernel: Kernel) -> None:
    # The flood fills the buffers between its pipe and the session: the broker's memory does
    # not grow, the neighbour keeps answering, and ending the attachment while the reader is
    # blocked on a full buffer is a clean detach, not an exception out of the block.
    async with attached(kernel, "other", caps=("mcp:other/*:call",)) as (_, neighbour):
        async with kernel.attach_mcp("raw", **RAW, deadline=2) as peer:
            await kernel.register_image(AgentImage("raw-user", tools=tuple(peer.tools),
                                                   needs=["mcp:raw/*:call"]))
            pid = kernel.spawn("raw-user", caps=["mcp:raw/*:call"])
            with pytest.raises(LimitExceeded, match="deadline of 2 s"):
                await kernel.call_tool(pid, "raw.flood", {})
            assert await kernel.call_tool(neighbour, "other.echo", {"text": "n"}) == {
                "result": "n"}
        assert await kernel.call_tool(neighbour, "other.echo", {"text": "m"}) == {
            "result": "m"}
    [outcome] = records(kernel, "host.raw.flood", "outcome")
    assert outcome["detail"]["error"] == "LIMIT_EXCEEDED"
    assert [r["resource"] for r in records(kernel, "mcp.detach")] == ["raw", "other"]


async def test_a_tool_list_past_its_bound_in_all_is_refused_on_the_record(
        kernel: Kernel) -> None:
    # Each page within the message bound, twelve megabytes in all: the broker would hold
    # every page (a server can send 16 pages of 4 MB, growing the broker by most of a GB).
    big = {**RAW, "command": [*RAW["command"], "--big-list"]}
    with pytest.raises(LimitExceeded, match="lists more than 8388608 bytes of tools"):
        async with kernel.attach_mcp("raw", **big):
            pass
    [rejected] = records(kernel, "mcp.attach", "rejected")
    assert rejected["resource"] == "raw" and rejected["detail"]["error"] == "LIMIT_EXCEEDED"
    async with attached(kernel, "other", caps=("mcp:other/*:call",)) as (_, neighbour):
        assert await kernel.call_tool(neighbour, "other.echo", {"text": "n"}) == {"result": "n"}


async def test_a_run_time_tool_cannot_take_an_attached_or_builtin_tools_name(
        db_path: Path, tmp_path: Path) -> None:
    # A model that registers "peer.echo" (or "write_file") would be listed, asked about and
    # approved under that name: a person could not tell it from the server's tool.
    from sandboxes.wasm import WasmSandbox
    from tests.sandboxes.test_wasm import ECHO

    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")]) as kernel, \
            kernel.attach_mcp("peer", **server()):
        await kernel.register_image(AgentImage("jit", tools=("register_tool",),
                                               needs=["tool:*:register,call"]))
        pid = kernel.spawn("jit", caps=["tool:*:register,call"])
        for taken in ("peer.echo", "write_file"):
            with pytest.raises(Conflict, match=f"{taken!r} is the name of a"):
                await kernel.call_tool(pid, "register_tool",
                                       {"name": taken, "lang": "wat", "source": ECHO})
        assert (await kernel.call_tool(pid, "register_tool", {
            "name": "my.echo", "lang": "wat", "source": ECHO}))["name"] == "my.echo"
        assert {t["name"] for t in kernel.list_tools(pid)} == {"register_tool", "my.echo"}
        errors = [r["detail"].get("error") for r in records(kernel, "tool.register", "outcome")]
        assert errors == ["CONFLICT", "CONFLICT", None]
