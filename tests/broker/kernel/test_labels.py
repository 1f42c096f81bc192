"""Information-flow labels: sources label what primitives return, processes and invocations
carry the join of what they saw, what they write keeps it, and sinks refuse (or ask about)
flows their capability bounds. Real files, SQLite, objects, mailboxes and processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from rich.console import Console

from broker import (
    ApprovalDenied,
    InvalidArgument,
    Kernel,
    NotCapable,
    NotFound,
    ScriptedPlanner,
    render,
)
from broker.mcp_server import approval_form
from broker.planner import CallTool
from broker.providers import web_rows
from tests.broker.kernel.crashing import crash_after, crashing, outcome_of
from tests.conftest import ALL_BUILTINS, open_image

SECRET_READ = {"kind": "fs", "scope": "/secrets/**", "rights": ["read"], "labels": ["secret"]}
EXPORT = {"kind": "fs", "scope": "/exports/**", "rights": ["write"], "flows": {"secret": "deny"}}
TOOLS = (*ALL_BUILTINS, "send", "receive", "raise_event", "wait_event")
NEEDS = ("fs:/**:read,write", "obj:*:read,write", "proc:*:spawn,message", "clock:*:read")


def _tree(kernel: Kernel) -> Path:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    for name in ("secrets", "exports", "public", "work"):
        (root / name).mkdir(exist_ok=True)
    (root / "secrets" / "token.txt").write_text("tok-123")
    (root / "public" / "readme.txt").write_text("hello")
    return root


async def _agent(kernel: Kernel, *caps: Any, **spawn: Any) -> int:
    await open_image(kernel, needs=NEEDS, tools=TOOLS, types={"text": {"type": "string"}})
    return kernel.spawn("agent", caps=["fs:/public/**:read", "fs:/work/**:read,write",
                                       *caps], **spawn)


def _records(kernel: Kernel, pid: int, syscall: str, phase: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == syscall and r["phase"] == phase]


async def test_a_secret_copied_to_exports_is_refused_a_public_copy_is_allowed(
        kernel: Kernel) -> None:
    root = _tree(kernel)
    honest = await _agent(kernel, SECRET_READ, EXPORT)
    leaker = await _agent(kernel, SECRET_READ, EXPORT)
    # The neighbour: public data flows to the export.
    text = await kernel.call_tool(honest, "read_file", {"path": "/public/readme.txt"})
    await kernel.call_tool(honest, "write_file", {"path": "/exports/ok.txt", "data": text})
    assert (root / "exports" / "ok.txt").read_text() == "hello"
    assert kernel.process(honest).label == frozenset()
    # The attack: read the token, copy it out.
    token = await kernel.call_tool(leaker, "read_file", {"path": "/secrets/token.txt"})
    assert kernel.process(leaker).label == {"secret"}
    with pytest.raises(NotCapable, match="secret"):
        await kernel.call_tool(leaker, "write_file", {"path": "/exports/leak.txt", "data": token})
    assert not (root / "exports" / "leak.txt").exists()  # refused before any effect
    [denied] = _records(kernel, leaker, "fs.write", "denied")
    assert denied["detail"]["labels"] == ["secret"] and "secret" in denied["detail"]["message"]
    assert not _records(kernel, leaker, "fs.write", "intent")
    # The read's record says what it returned, and the process's label is stored.
    [read] = _records(kernel, leaker, "fs.read", "intent+outcome")
    assert read["detail"]["labels"] == ["secret"]
    assert kernel.store.get_process(leaker)["labels"] == ["secret"]
    # The labelled process may still write where no bound refuses it; the file keeps the label.
    await kernel.call_tool(leaker, "write_file", {"path": "/work/note.txt", "data": token})
    assert kernel.store.file_labels("/work/note.txt") == {"secret"}
    [intent] = _records(kernel, leaker, "fs.write", "intent")
    assert intent["detail"]["labels"] == ["secret"]


async def test_a_label_rule_given_at_open_labels_results_and_a_file_passes_it_on(
        db_path: Path) -> None:
    rules = [{"kind": "fs", "scope": "/secrets/**", "labels": ["secret"]}]
    async with Kernel.open(db_path, label_rules=rules) as kernel:
        _tree(kernel)
        reader = await _agent(kernel, "fs:/secrets/**:read")
        await kernel.call_tool(reader, "write_file", {  # a plain capability: the rule labels
            "path": "/work/copy.txt",
            "data": await kernel.call_tool(reader, "read_file", {"path": "/secrets/token.txt"})})
    async with Kernel.open(db_path) as kernel:  # no rules this time: the file keeps its label
        laundry = await _agent(kernel, EXPORT)
        data = await kernel.call_tool(laundry, "read_file", {"path": "/work/copy.txt"})
        assert kernel.process(laundry).label == {"secret"}
        with pytest.raises(NotCapable, match="secret"):
            await kernel.call_tool(laundry, "write_file", {"path": "/exports/x", "data": data})
        # Overwritten with public data by a public writer, the file is public again.
        clean = await _agent(kernel)
        await kernel.call_tool(clean, "write_file", {"path": "/work/copy.txt", "data": "x"})
        assert kernel.store.file_labels("/work/copy.txt") == frozenset()
        assert kernel.process(reader).label == {"secret"}  # reloaded with its label


async def test_objects_round_trip_with_their_labels(kernel: Kernel) -> None:
    _tree(kernel)
    writer = await _agent(kernel, SECRET_READ)
    token = await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
    await kernel.call_tool(writer, "put_object", {"name": "t", "type": "text", "value": token})
    await kernel.call_tool(writer, "put_object", {"name": "t", "type": "text", "value": "v2",
                                                  "ns": f"proc/{writer}"})
    assert kernel.store.get_object(f"proc/{writer}", "t", 1)["labels"] == {"secret"}
    reader = await _agent(kernel, f"obj:proc/{writer}:read", EXPORT)
    got = await kernel.call_tool(reader, "get_object", {"name": "t", "ns": f"proc/{writer}",
                                                        "version": 1})
    assert got["value"] == "tok-123" and kernel.process(reader).label == {"secret"}
    with pytest.raises(NotCapable):
        await kernel.call_tool(reader, "write_file", {"path": "/exports/t", "data": "t"})


async def test_messages_and_children_carry_the_label(kernel: Kernel) -> None:
    _tree(kernel)
    receiver = await _agent(kernel, EXPORT)
    sender = await _agent(kernel, SECRET_READ, EXPORT, f"proc:{receiver}:message",
                          "proc:agent:spawn")
    bystander = await _agent(kernel, EXPORT, f"proc:{receiver}:message")
    await kernel.call_tool(bystander, "send", {"pid": receiver, "body": "public hello"})
    got = await kernel.call_tool(receiver, "receive", {"timeout": 0})
    assert got["body"] == "public hello" and "labels" not in got
    assert kernel.process(receiver).label == frozenset()
    token = await kernel.call_tool(sender, "read_file", {"path": "/secrets/token.txt"})
    await kernel.call_tool(sender, "send", {"pid": receiver, "body": token})
    got = await kernel.call_tool(receiver, "receive", {"timeout": 0})
    assert got["body"] == "tok-123" and "labels" not in got  # taken off, taken on
    assert kernel.process(receiver).label == {"secret"}
    with pytest.raises(NotCapable):
        await kernel.call_tool(receiver, "write_file", {"path": "/exports/m", "data": token})
    child = await kernel.call_tool(sender, "spawn", {
        "image": "agent", "caps": [EXPORT], "args": {"token": token}})
    assert kernel.process(child).label == {"secret"}
    assert kernel.store.get_process(child)["labels"] == ["secret"]
    # A child may not drop its parent's bound: that would widen what it may export.
    with pytest.raises(NotCapable, match="escalation"):
        await kernel.call_tool(sender, "spawn", {"image": "agent", "caps": [
            "fs:/exports/**:write"]})


async def test_a_raised_event_carries_its_raisers_label(kernel: Kernel) -> None:
    _tree(kernel)
    raiser = await _agent(kernel, SECRET_READ, "proc:event:news:message")
    waiter = await _agent(kernel, EXPORT, "proc:event:news:message")
    kernel.raise_event("news", {"from": "host"})  # the host's: public
    got = await kernel.call_tool(waiter, "wait_event", {"name": "news", "timeout": 0})
    assert got["data"] == {"from": "host"} and kernel.process(waiter).label == frozenset()
    token = await kernel.call_tool(raiser, "read_file", {"path": "/secrets/token.txt"})
    await kernel.call_tool(raiser, "raise_event", {"name": "news", "data": token})
    got = await kernel.call_tool(waiter, "wait_event", {"name": "news", "timeout": 0})
    assert got["data"] == "tok-123" and "labels" not in got
    assert kernel.process(waiter).label == {"secret"}
    with pytest.raises(NotCapable, match="secret"):
        await kernel.call_tool(waiter, "write_file", {"path": "/exports/news", "data": "x"})


async def test_forks_and_checkpoints_keep_the_label(kernel: Kernel) -> None:
    _tree(kernel)
    await open_image(kernel, needs=NEEDS, tools=TOOLS, types={"text": {"type": "string"}})
    pid = kernel.spawn("agent", caps=[SECRET_READ, EXPORT], planner=ScriptedPlanner([
        CallTool("read_file", {"path": "/secrets/token.txt"}),
        CallTool("sleep", {"seconds": 30})]))
    with trio.fail_after(10):
        while not kernel.process(pid).label:
            await trio.sleep(0.01)
    assert kernel.checkpoint(pid)["state"]["labels"] == ["secret"]
    child = kernel.fork(pid)
    assert kernel.process(child).label == {"secret"}
    assert kernel.store.get_process(child)["labels"] == ["secret"]
    # The fork keeps the bound too: its copy of the export capability still refuses.
    with pytest.raises(NotCapable, match="secret"):
        await kernel.call_tool(child, "write_file", {"path": "/exports/f", "data": "x"})
    kernel.kill(pid)


async def test_labels_survive_a_crash_and_resume(db_path: Path) -> None:
    """The broker dies right after the secret read's outcome is recorded, with its tool
    call's (every later store write fails, as after SIGKILL): the label was stored before,
    and the resumed process still may not export."""
    planner = {"kind": "scripted", "actions": [
        {"tool": "read_file", "args": {"path": "/secrets/token.txt"}},
        {"tool": "write_file", "args": {"path": "/exports/after.txt", "data": "tok"}},
        {"exit": 0}]}
    started: list[int] = []

    async def body(kernel: Kernel) -> None:
        _tree(kernel)
        await open_image(kernel, "leaky", needs=NEEDS, tools=TOOLS, planner=planner)
        started.append(kernel.spawn("leaky", caps=[SECRET_READ, EXPORT]))

    # A builtin's read is committed with its tool call's outcome (one commit for the call).
    # (read_file's call had no effect: written whole, by `append_call`, since onecall)
    undo = crash_after("append_call", lambda _, record, *__, **___: (
        outcome_of("tool.call")(_, record) and record.resource == "read_file"))
    try:
        await crashing(db_path, body)
    finally:
        undo()
    [pid] = started
    async with Kernel.open(db_path) as kernel:
        status = await kernel.wait(pid, timeout=10)
        assert kernel.process(pid).label == {"secret"}
        assert not Path(kernel.fs.root, "exports", "after.txt").exists()  # type: ignore[attr-defined]
        [denied] = _records(kernel, pid, "fs.write", "denied")
        assert denied["detail"]["labels"] == ["secret"]
        assert status["state"] == "exited"


async def test_approving_once_declassifies_exactly_that_call(kernel: Kernel) -> None:
    root = _tree(kernel)
    ask = {"kind": "fs", "scope": "/exports/**", "rights": ["write"],
           "flows": {"secret": "ask"}}
    pid = await _agent(kernel, SECRET_READ, ask)
    await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
    results: list[Any] = []

    async def write(path: str) -> None:
        try:
            results.append(await kernel.call_tool(pid, "write_file",
                                                  {"path": path, "data": "redacted"}))
        except ApprovalDenied as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, "/exports/summary.txt")
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        [request] = kernel.approvals()
        assert request["resource"] == "/exports/summary.txt" and request["labels"] == ["secret"]
        shown = Console(width=200, record=True)  # a person sees what approving declassifies
        shown.print(render.approvals_table([request]))
        assert "fs.write (data labelled secret)" in shown.export_text()
        assert "<dt>data labelled</dt><dd>secret</dd>" in web_rows.row(request, "csrf")
        form = approval_form(request)
        assert form is not None and "data labelled secret: approving" in form.message
        kernel.approve(request["id"])
    assert results == [8] and (root / "exports" / "summary.txt").read_text() == "redacted"
    [asked] = _records(kernel, pid, "fs.write", "ask")
    assert asked["detail"]["labels"] == ["secret"]
    [intent] = _records(kernel, pid, "fs.write", "intent")
    assert intent["detail"]["approval"] == request["id"] and intent["detail"]["labels"] == [
        "secret"]
    # Exactly that call: the next flow asks again, and a no is a typed denial with a record.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, "/exports/again.txt")
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        kernel.deny(kernel.approvals()[0]["id"])
    assert isinstance(results[1], ApprovalDenied)
    assert not (root / "exports" / "again.txt").exists()
    assert _records(kernel, pid, "fs.write", "denied")


async def test_a_bad_label_rule_is_refused_before_anything_opens(tmp_path: Path) -> None:
    for bad in ({"kind": "fs", "labels": ["Secret"]}, {"kind": "fs", "labels": "secret"},
                {"kind": "fs", "scope": "/a/**", "labels": ["x"], "why": 1}):
        with pytest.raises(InvalidArgument):
            async with Kernel.open(tmp_path / "k.db", label_rules=[bad]):
                pass
    assert list(tmp_path.iterdir()) == []


async def test_a_failed_read_of_a_secret_labels_the_caller_too(kernel: Kernel) -> None:
    """That the secret file is not text, or is not there, is something of the secret."""
    root = _tree(kernel)
    (root / "secrets" / "blob.bin").write_bytes(b"\xff\xfe")
    prober = await _agent(kernel, SECRET_READ, EXPORT)
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(prober, "read_file", {"path": "/secrets/blob.bin"})
    assert kernel.process(prober).label == {"secret"}
    other = await _agent(kernel, SECRET_READ, EXPORT)
    with pytest.raises(NotFound):
        await kernel.call_tool(other, "read_file", {"path": "/secrets/missing.txt"})
    assert kernel.process(other).label == {"secret"}
    [failed] = [r for r in _records(kernel, other, "fs.read", "intent+outcome")]
    assert failed["detail"]["ok"] is False and failed["detail"]["labels"] == ["secret"]
    with pytest.raises(NotCapable, match="secret"):
        await kernel.call_tool(other, "write_file", {"path": "/exports/x", "data": "no file"})
