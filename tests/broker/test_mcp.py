"""`libos mcp`: the SDK's own client over stdio, against `python -m broker.cli mcp` in a
subprocess; both protocol eras (handshake 2025-11-25 and 2026-07-28)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
import trio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from broker import Kernel
from broker.approvals.stored import answer_in_store
from broker.store import SQLiteStore
from broker.store.audit import ADMIN_SYSCALLS
from broker.syscalls import TABLE
from tests.broker.corpus import (
    CORPUS,
    CSI,
    DECOY,
    EVERYTHING,
    LINE_FORGERY,
    LONG,
    OSC52,
    TAIL,
    assert_escaped,
    assert_inert,
)
from tests.conftest import python_server

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
    return python_server("-m", "broker.cli", "--db", str(tmp_path / "libos.db"), "mcp", "--image",
                         str(image(tmp_path)), "--caps", *caps)


@pytest.mark.parametrize("mode", MODES)
async def test_a_question_is_put_to_the_clients_user(tmp_path: Path, mode: str) -> None:
    asked: list[Any] = []

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"answer": option(params, "blue")})

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
    options = asked[0].requested_schema["properties"]["answer"]["oneOf"]
    assert [o["title"] for o in options] == ["red", "blue"]


def option(params: Any, title: str) -> str:
    """The option of a form whose label is `title` (labels are inert; options are tokens)."""
    [const] = [o["const"] for o in params.requested_schema["properties"]["answer"]["oneOf"]
               if o["title"] == title]
    return const


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
    calls = [r for r in records if r["syscall"] == "tool.call"  # (whole: a call with no effect)
             and r["phase"] in ("intent", "intent+outcome")]
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
                "description": "count words\n" + EVERYTHING, "schema": {
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
        listed = {t.name: t for t in (await client.list_tools()).tools}
        # A description a model wrote is shown to people: inert, its own lines kept.
        description = listed["wordcount"].description
        assert description.split("\n")[0] == "count words"
        assert_inert(description)
        assert_escaped(description)
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


@pytest.mark.parametrize("mode", MODES)
async def test_always_by_elicitation_chooses_a_scope_no_wider_than_asked(
        tmp_path: Path, mode: str) -> None:
    """The form offers "always" for the resource, and for each wider scope up to the asking
    capability's (`/out/**`), the page's choices; the broker grants the one chosen."""
    asked: list[Any] = []
    answers = iter(["Always: a standing grant for this resource exactly", "Always for /out/**"])

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"answer": option(
            params, next(answers))})

    async with Client(server(tmp_path), mode=mode, elicitation_callback=elicit) as client:
        # "always" for /out/a.txt exactly: /out/b.txt is asked again; then /out/** is chosen.
        for name in ("a", "a", "b", "c", "d"):
            assert error_of(await client.call_tool("write_file", {
                "path": f"/out/{name}.txt", "data": name})) is None
    assert len(asked) == 2
    titles = [o["title"] for o in asked[0].requested_schema["properties"]["answer"]["oneOf"]]
    assert titles[1:3] == ["Always: a standing grant for this resource exactly",
                           "Always for /out/**"]
    assert not any("/**" in t and "/out" not in t for t in titles)  # never wider than asked
    answered = [detail(r) for r in audit(tmp_path) if r["syscall"] == "approval.answer"]
    assert [(a["answer"], a.get("scope")) for a in answered] == [
        ("always", "/out/a.txt"), ("always", "/out/**")]


# -- what a client's user is shown, and who answered ---------------------------------------

def bounded(test: Any) -> Any:
    """A test that fails, not hangs, when a call never ends (a request left pending)."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        with trio.fail_after(180):
            return await test(*args, **kwargs)
    return run


HOSTILE_CLIENT = "evil\x1b]52;c;Y3VybA==\x07client\u2028tool: forged"


def options(params: Any) -> list[str]:
    return [o["const"] for o in params.requested_schema["properties"]["answer"]["oneOf"]]


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    store = SQLiteStore(tmp_path / "libos.db", writer=False)
    try:
        return [r.to_json() for r in store.audit_records()]
    finally:
        store.close()


def detail(record: dict[str, Any]) -> dict[str, Any]:
    value = record["detail"]
    return json.loads(value) if isinstance(value, str) else value


@pytest.mark.parametrize("mode", MODES)
@bounded
async def test_a_form_shows_the_request_whole_and_inert_or_only_denies(
        tmp_path: Path, mode: str) -> None:
    """The corpus in the arguments, a reason forging a line with U+2028, a hostile client
    name: the form shows everything escaped. A request too long for a form (its dangerous
    tail beyond every old cut-off) gets a form that only denies; "once" sent back anyway is
    a denial. Each elicitation and each answer is on the record, naming the client."""
    asked: list[Any] = []

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params)
        return types.ElicitResult(action="accept", content={"answer": "once"})

    async with Client(server(tmp_path), mode=mode, elicitation_callback=elicit,
                      client_info=types.Implementation(name=HOSTILE_CLIENT, version="1")
                      ) as client:
        listed = await client.list_tools()
        assert "write_file" in {t.name for t in listed.tools}
        data = EVERYTHING
        assert value_of(await client.call_tool("write_file", {
            "path": "/out/corpus.txt", "data": data, "reason": LINE_FORGERY[0]})) == len(
            data.encode())
        assert error_of(await client.call_tool("write_file", {
            "path": "/out/run.sh", "data": LONG})) == "APPROVAL_DENIED"

    whole, cut = asked
    assert_inert(whole.message)
    assert_escaped(whole.message)
    assert [line for line in whole.message.split("\n") if line.startswith("tool:")] == [
        "tool: write_file   right: fs:write"]  # the forged line is not a line
    assert options(whole) == ["once", "always", "always:1", "deny"]  # /out/x, or /out/**
    assert_inert(cut.message)
    assert options(cut) == ["deny"]
    assert DECOY not in cut.message and TAIL not in cut.message
    assert "libos approvals show apr_" in cut.message and "only deny" in cut.message
    assert (tmp_path / "libos-fs" / "out" / "corpus.txt").read_text() == data
    assert not (tmp_path / "libos-fs" / "out" / "run.sh").exists()

    records = audit(tmp_path)
    assert any(r["syscall"] == "tool.list" and r["phase"] == "intent+outcome" for r in records)
    # Every record names a syscall of the table or one of the broker's own records.
    assert {r["syscall"] for r in records} <= set(TABLE) | ADMIN_SYSCALLS
    elicited = [detail(r) for r in records if r["syscall"] == "approval.elicit"]
    outcomes = [e for e in elicited if e["outcome"] != "asked"]
    assert [(e["outcome"], e["whole"], e["offered"]) for e in outcomes] == [
        ("accept", True, ["always", "always:1", "deny", "once"]), ("accept", False, ["deny"])]
    answers = [detail(r) for r in records if r["syscall"] == "approval.answer"]
    assert [a["answer"] for a in answers] == ["once", "deny"]
    who = answers[0]["who"]
    assert who.startswith("mcp:evil\\u001b]52;c;") and who.endswith(":pid 1")
    assert_inert(who, layout="")
    assert all(e["client"] == who for e in elicited)


@pytest.mark.parametrize("mode", MODES)
@bounded
async def test_choices_are_inert_labels_and_the_answer_is_the_choice(tmp_path: Path,
                                                                      mode: str) -> None:
    asked: list[Any] = []
    choices = [text for text, _ in CORPUS.values()]

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params)
        if len(asked) == 1:  # the OSC 52 choice, by its label
            return types.ElicitResult(action="accept", content={
                "answer": option(params, next(o["title"] for o in params.requested_schema[
                    "properties"]["answer"]["oneOf"] if "]52;" in o["title"]))})
        return types.ElicitResult(action="accept", content={"answer": "0"})

    async with Client(server(tmp_path, [*CAPS, "human:*:ask"]), mode=mode,
                      elicitation_callback=elicit) as client:
        picked = value_of(await client.call_tool("ask_human", {
            "question": "Which one? " + CSI[0], "choices": choices}))
        assert picked == OSC52[0]  # the process gets the choice itself, raw
        # Too many choices to show: the form only declines, whatever comes back.
        refused = await client.call_tool("ask_human", {
            "question": "Which?", "choices": [f"c{n}" for n in range(40)]})
        assert error_of(refused) == "APPROVAL_DENIED"
    labels = [o["title"] for o in asked[0].requested_schema["properties"]["answer"]["oneOf"]]
    for label in labels:
        assert_inert(label, layout="")
    assert_escaped(" ".join(labels))
    assert_inert(asked[0].message) and "\\u001b[2J" in asked[0].message
    assert options(asked[1]) == ["deny"]


@bounded
async def test_a_failed_elicitation_is_recorded_and_the_request_waits(tmp_path: Path) -> None:
    """The client fails the elicitation: a record says so, the request stays in the queue,
    and a person answers it with the CLI (a legitimate approval that still works)."""
    failures = 0

    async def elicit(context: Any, params: Any) -> Any:
        nonlocal failures
        failures += 1
        return types.ErrorData(code=types.INTERNAL_ERROR, message="no UI \x1b[2J here")

    db = tmp_path / "libos.db"
    async with Client(server(tmp_path), mode="legacy", elicitation_callback=elicit) as client:
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def call() -> None:
                results.append(await client.call_tool(
                    "write_file", {"path": "/out/queued.txt", "data": "queued"}))

            nursery.start_soon(call)
            with trio.fail_after(30):
                while not [r for r in audit(tmp_path) if r["syscall"] == "approval.elicit"]:
                    await trio.sleep(0.05)
            [pending] = SQLiteStore(db, writer=False).list_approvals("pending")
            answer_in_store(SQLiteStore(db, writer=False), pending["id"], "once",
                            who="cli:test", now=time.time())
        assert value_of(results[0]) == 6
    assert failures == 1
    [failed] = [detail(r) for r in audit(tmp_path) if r["syscall"] == "approval.elicit"]
    assert failed["outcome"] == "failed" and failed["request"] == pending["id"]
    assert "\x1b" not in failed["error"]
    [answer] = [detail(r) for r in audit(tmp_path) if r["syscall"] == "approval.answer"]
    assert answer["who"] == "cli:test" and answer["answer"] == "once"


SPAWN_AND_WAIT = """
export default async function run(args: {}, libos: any) {
  const pid = await libos.proc.spawn("child", [
    {kind: "fs", scope: "/out/**", rights: ["write"], effect: "ask"}]);
  return await libos.proc.wait(pid, 60);
}
"""


@bounded
async def test_a_child_spawned_during_a_call_is_not_put_to_the_parents_client(
        tmp_path: Path) -> None:
    """A tool the client calls spawns a child and waits for it; the child asks to write. The
    request is the child's: it is not put to the parent's client (whose "always" would become
    a standing grant for the child) but waits in the queue. The parent's own request, in the
    same session, still is put to the client and approved."""
    from broker import AgentImage, Kernel

    db = tmp_path / "libos.db"
    async with Kernel.open(db) as kernel:
        await kernel.register_image(AgentImage(
            "child", tools=("write_file",), needs=("fs:/**:read,write",),
            planner={"kind": "scripted", "actions": [
                {"tool": "write_file", "args": {"path": "/out/child.txt", "data": "child"}}]}))
    path = tmp_path / "parent.json"
    path.write_text(json.dumps({
        "name": "parent", "tools": ["write_file", "register_tool"],
        "needs": ["fs:/**:read,write", "tool:*:register,call", "proc:child:spawn"]}))
    (tmp_path / "libos-fs" / "out").mkdir(parents=True)
    params = python_server("-m", "broker.cli", "--db", str(db), "mcp", "--image", str(path),
                           "--caps", ASK_OUT, "tool:*:register,call", "proc:child:spawn")
    asked: list[str] = []

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "always"})

    async with Client(params, mode="legacy", elicitation_callback=elicit,
                      client_info=types.Implementation(name="desk", version="1")) as client:
        assert value_of(await client.call_tool("register_tool", {
            "name": "spawn_and_wait", "lang": "ts", "source": SPAWN_AND_WAIT,
            "schema": {"type": "object"}}))["name"] == "spawn_and_wait"
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def call() -> None:
                results.append(await client.call_tool("spawn_and_wait", {}))

            nursery.start_soon(call)
            with trio.fail_after(60):
                while not (pending := SQLiteStore(db, writer=False).list_approvals("pending")):
                    await trio.sleep(0.05)
            [request] = pending
            assert request["pid"] == 2  # the child's
            await trio.sleep(1)  # time enough for a wrongly routed form to reach the client
            assert asked == []
            answer_in_store(SQLiteStore(db, writer=False), request["id"], "deny",
                            who="cli:test", now=time.time())
        finished = value_of(results[0])
        assert finished["pid"] == 2 and finished["state"] == "exited"
        # The parent's own request is put to its client, and answered there.
        assert value_of(await client.call_tool(
            "write_file", {"path": "/out/parent.txt", "data": "parent"})) == 6
    assert len(asked) == 1 and "process 1 asks" in asked[0]
    assert not (tmp_path / "libos-fs" / "out" / "child.txt").exists()
    records = audit(tmp_path)
    answers = [(r["pid"], detail(r)["who"], detail(r)["answer"]) for r in records
               if r["syscall"] == "approval.answer"]
    assert answers == [(2, "cli:test", "deny"), (1, "mcp:desk:pid 1", "always")]
    store = SQLiteStore(db, writer=False)
    allows = [(c.owner, c.scope) for _, c in store.load_capabilities()
              if c.effect == "allow" and c.scope == "/out/parent.txt"]
    assert allows == [(1, "/out/parent.txt")]  # the standing grant is the parent's only


async def _rpc(proc: trio.Process, buffer: bytearray, message: dict[str, Any]) -> None:
    assert proc.stdin is not None
    await proc.stdin.send_all(json.dumps(message).encode() + b"\n")


async def _reply(proc: trio.Process, buffer: bytearray, ident: int) -> dict[str, Any]:
    assert proc.stdout is not None
    while True:
        while b"\n" in buffer:
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            message = json.loads(line)
            if message.get("id") == ident:
                return message
        buffer += await proc.stdout.receive_some(65536)


@bounded
async def test_a_disconnect_mid_call_settles_its_request_and_approve_always_is_refused(
        tmp_path: Path) -> None:
    """A client calls a tool that waits for approval, then goes away (its end of stdio
    closes: no cancel notice). The request is settled as cancelled at once, audited, and
    `libos approve ID --always` is refused with CONFLICT; the next broker grants nothing to
    the dead process. A request of a session that stays is approved as usual."""
    from broker import Kernel
    from broker.cli import main as cli

    db = tmp_path / "libos.db"
    params = server(tmp_path)
    proc = await trio.lowlevel.open_process(
        [params.command, *params.args], cwd=params.cwd, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE)
    try:
        buffer = bytearray()
        await _rpc(proc, buffer, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}})
        assert "result" in await _reply(proc, buffer, 1)
        await _rpc(proc, buffer, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        await _rpc(proc, buffer, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "write_file", "arguments": {"path": "/out/left.sh", "data": "rm -rf ~"}}})
        with trio.fail_after(30):
            while not (pending := SQLiteStore(db, writer=False).list_approvals("pending")):
                await trio.sleep(0.05)
        [request] = pending
        assert proc.stdin is not None
        await proc.stdin.aclose()  # the client is gone
        with trio.fail_after(30):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert SQLiteStore(db, writer=False).get_approval(request["id"])["state"] == "cancelled"
    settled = [detail(r) for r in audit(tmp_path) if r["resource"] == "/out/left.sh"
               and r["phase"] == "admin" and detail(r).get("state") == "cancelled"]
    assert [s["request"] for s in settled] == [request["id"]]

    out = subprocess.run([sys.executable, "-m", "broker.cli", "--db", str(db), "approve",
                          request["id"], "--always"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "CONFLICT" in out.stderr and "cancelled" in out.stderr
    async with Kernel.open(db) as kernel:  # the next broker: the refusal is audited
        kernel.queue.sweep()
        refused = [r for r in kernel.audit() if r["syscall"] == "approval.answer"]
        assert [(r["phase"], r["detail"]["error"]) for r in refused] == [
            ("rejected", "CONFLICT")]
        assert not [c for _, c in kernel.store.load_capabilities()
                    if c.owner == request["pid"] and c.effect == "allow"
                    and c.scope.startswith("/out")]
    assert cli(["--db", str(db), "approvals"]) == 0  # nothing is pending
    assert SQLiteStore(db, writer=False).list_approvals("pending") == []


@bounded
async def test_a_call_the_client_cancels_settles_its_request(tmp_path: Path) -> None:
    db = tmp_path / "libos.db"
    async with Client(server(tmp_path), mode="legacy") as client:
        with trio.move_on_after(60) as waited:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.call_tool, "write_file",
                                   {"path": "/out/gone.txt", "data": "gone"})
                while not (pending := SQLiteStore(db, writer=False).list_approvals(
                        "pending")):
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()  # the client gives up on the call
        assert not waited.cancelled_caught
        [request] = pending
        with trio.fail_after(30):
            while SQLiteStore(db, writer=False).get_approval(request["id"])["state"] != (
                    "cancelled"):
                await trio.sleep(0.05)
        with pytest.raises(Exception, match="cancelled"):
            answer_in_store(SQLiteStore(db, writer=False), request["id"], "always",
                            who="cli:test", now=time.time())
        # The session goes on: the next request is answered as usual.
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def call() -> None:
                results.append(await client.call_tool(
                    "write_file", {"path": "/out/kept.txt", "data": "kept"}))

            nursery.start_soon(call)
            with trio.fail_after(30):
                while not (pending := SQLiteStore(db, writer=False).list_approvals(
                        "pending")):
                    await trio.sleep(0.05)
            answer_in_store(SQLiteStore(db, writer=False), pending[0]["id"], "once",
                            who="cli:test", now=time.time())
        assert value_of(results[0]) == 4
    assert not (tmp_path / "libos-fs" / "out" / "gone.txt").exists()


def strings(value: Any) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


@bounded
async def test_a_tools_schema_is_listed_inert(tmp_path: Path) -> None:
    """A schema a model wrote is shown to people too (clients label a tool's form with its
    titles, descriptions, property names and options): every string in it is inert, and
    the tool's own arguments work as before."""
    hostile = {
        "type": "object", "title": EVERYTHING, "description": "count words\n" + EVERYTHING,
        "properties": {
            "path": {"type": "string", "title": CSI[0], "description": LINE_FORGERY[0]},
            "mode" + LINE_FORGERY[0]: {"enum": ["plain", OSC52[0]], "default": OSC52[0]}},
        "required": ["path"]}
    async with Client(server(tmp_path), mode="auto") as client:
        await client.call_tool("make_dir", {"path": "/data"})
        await client.call_tool("write_file", {"path": "/data/t.txt", "data": "a b c\n"})
        assert value_of(await client.call_tool("register_tool", {
            "name": "wordcount", "lang": "wat", "source": WORDCOUNT, "description": "words",
            "schema": hostile}))["name"] == "wordcount"
        listed = {t.name: t for t in (await client.list_tools()).tools}
        schema = listed["wordcount"].input_schema
        for text in strings(schema):
            assert_inert(text)
        assert_escaped(schema["title"])
        assert schema["description"].split("\n")[0] == "count words"
        assert schema["properties"]["path"]["description"].startswith(LINE_FORGERY[1])
        # The neighbour: the tool is called with its own arguments, as ever.
        assert value_of(await client.call_tool("wordcount", {"path": "/data/t.txt"})) == {
            "words": 3, "lines": 1, "bytes": 6}
    records = audit(tmp_path)
    assert sum(r["syscall"] == "tool.list" and r["phase"] == "intent+outcome"
               for r in records) >= 1


async def test_an_elicitation_record_reads_its_request_not_the_history(
        kernel: Kernel, nursery: trio.Nursery) -> None:
    """Memory does not grow with history: recording what a client did with a request reads
    that request, not every request the store ever held (each with its whole arguments)."""
    import tracemalloc
    from types import SimpleNamespace

    from broker.mcp_server import LibosMCP, approval_form
    from tests.broker.kernel.test_approvals import ASK_WRITE, _collect, _pending, _proc

    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    for n in range(40):  # settled requests of the past, 1 MB of arguments each
        nursery.start_soon(_collect, results, kernel.call_tool(
            pid, "write_file", {"path": f"/out/{n}.txt", "data": "x" * (1 << 20)}))
        kernel.deny((await _pending(kernel))[0]["id"])
    nursery.start_soon(_collect, results, kernel.call_tool(
        pid, "write_file", {"path": "/out/now.txt", "data": "now"}))
    [request] = await _pending(kernel)
    mcp = LibosMCP(kernel, pid, nursery)
    ctx = SimpleNamespace(session=SimpleNamespace(client_params=None))
    form = approval_form(request)
    assert form is not None
    tracemalloc.start()
    try:
        mcp._record(request["id"], form, ctx, "asked")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak / (1 << 20):.0f} MiB read to record one elicitation"
    [record] = [r for r in kernel.audit(pid) if r["syscall"] == "approval.elicit"]
    assert record["detail"]["request"] == request["id"]
    assert record["resource"] == "/out/now.txt" and record["args_hash"] == request["args_hash"]
    kernel.approve(request["id"])  # the neighbour: the request itself is answered as ever
    with trio.fail_after(10):
        while len(results) < 41:
            await trio.sleep(0.01)
    assert results[-1] == 3
