"""One record for a tool call with no effect of its own (`broker.kernel.held_call.HeldCall`):
its `tool.call` record is held, not chained, until something in the call needs its seq; a call
that ends with it still held is ONE record (phase `intent+outcome`) with its arguments' and its
result's payloads, the builtin reads it made after it, all in one commit. A call that has an
effect, or is refused something, keeps its intent first. Real SQLite, real replay and verify.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker import InvalidArgument, Kernel, NotCapable
from broker.kernel.process import AgentProcess
from broker.store import StoredRecord
from broker.store.vouch import PAYLOAD_HASH, RESULT_HASH, Tampered, unpack
from tests.broker.kernel.test_read_commit import _reader, _since, _statements


def _stored(kernel: Kernel, seq: int) -> StoredRecord:
    return next(iter(kernel.store.audit_records(after=seq - 1, limit=1)))


async def _warm(kernel: Kernel) -> tuple[AgentProcess, int]:
    proc = await _reader(kernel)
    args = {"path": "/data/note.txt"}
    assert await kernel.call_tool(proc.pid, "read_file", args) == "hello"  # (labels: once)
    return proc, kernel.store.head_seq


async def test_a_builtin_read_is_one_call_record_listed_with_its_read(kernel: Kernel) -> None:
    proc, before = await _warm(kernel)
    seen = _statements(kernel)
    assert await kernel.call_tool(proc.pid, "read_file", {"path": "/data/note.txt"}) == "hello"
    assert seen == ["INSERT 1"]  # one record, one commit: the read folded into the call's
    call, read = _since(kernel, proc.pid, before)  # (as listed: the read on a line of its own)
    assert (call["phase"], call["syscall"], call["inv"]) == ("intent+outcome", "tool.call", None)
    assert (read["phase"], read["syscall"], read["folded"]) == ("intent+outcome", "fs.read", True)
    assert read["inv"] == call["seq"] == read["seq"] and read["tool"] == "read_file"
    detail = call["detail"]
    assert detail["args"] == {"name": "read_file", "args": {"path": "/data/note.txt"}}
    assert detail["ok"] is True and detail["result"] == "hello" and "intent" not in detail
    assert PAYLOAD_HASH in detail and RESULT_HASH in detail
    assert kernel.verify_audit()[1] == []


async def test_a_whole_call_keeps_both_payloads_and_replays(kernel: Kernel) -> None:
    proc, before = await _warm(kernel)
    await kernel.call_tool(proc.pid, "read_file", {"path": "/data/note.txt"})
    call = _stored(kernel, before + 1)
    assert unpack(kernel.store.vouched_payload(call)) == "hello"  # its result, by default
    assert unpack(kernel.store.vouched_payload(call, PAYLOAD_HASH)) == {
        "name": "read_file", "args": {"path": "/data/note.txt"}}
    replayed = await kernel.replay(call.seq)
    assert replayed["same"] is True and replayed["syscalls"] == 1
    assert replayed["recorded"] == {"ok": True, "value": "hello"}


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda payload: payload[:-1] + b"!", "edited"),  # the result's last byte
    (lambda payload: b"\xa1x" + payload[2:], "edited"),  # the arguments' first bytes
    (lambda payload: payload + b"\xc0", "edited"),  # a third value planted after both
    (lambda payload: None, "removed"),
])
async def test_a_whole_calls_payload_edited_is_found(kernel: Kernel, db_path: Path,
                                                     edit: Any, problem: str) -> None:
    proc, before = await _warm(kernel)
    await kernel.call_tool(proc.pid, "read_file", {"path": "/data/note.txt"})
    seq = before + 1
    kernel.store.commit_deferred()
    with sqlite3.connect(db_path) as other:
        [(payload,)] = other.execute("SELECT payload FROM audit WHERE seq=?", (seq,))
        other.execute("UPDATE audit SET payload=? WHERE seq=?", (edit(bytes(payload)), seq))
    problems = kernel.verify_audit()[1]
    assert any(f"record {seq}" in p and problem in p for p in problems), problems
    with pytest.raises(Tampered):
        kernel.store.vouched_payload(_stored(kernel, seq), PAYLOAD_HASH)


async def test_a_refused_read_chains_the_call_first(kernel: Kernel) -> None:
    """A denial names its invocation: the held call is chained (as an intent) before it, and
    the call's outcome names that intent."""
    proc, before = await _warm(kernel)
    with pytest.raises(NotCapable):
        await kernel.call_tool(proc.pid, "read_file", {"path": "/etc/passwd"})
    call, denied, outcome = _since(kernel, proc.pid, before)
    assert [(r["phase"], r["syscall"]) for r in (call, denied, outcome)] == [
        ("intent", "tool.call"), ("denied", "fs.read"), ("outcome", "tool.call")]
    assert denied["inv"] == call["seq"] and outcome["inv"] is None
    assert outcome["detail"]["intent"] == call["seq"] and outcome["detail"]["ok"] is False
    assert kernel.verify_audit()[1] == []


async def test_a_call_that_fails_before_its_tool_runs_is_one_record(kernel: Kernel) -> None:
    proc, before = await _warm(kernel)
    with pytest.raises(InvalidArgument):  # its arguments fail the tool's schema
        await kernel.call_tool(proc.pid, "read_file", {"path": 7})
    [call] = _since(kernel, proc.pid, before)
    assert (call["phase"], call["syscall"]) == ("intent+outcome", "tool.call")
    assert call["detail"]["ok"] is False and call["detail"]["error"]
    assert kernel.verify_audit()[1] == []


async def test_a_step_calling_now_writes_two_records(kernel: Kernel) -> None:
    proc = await _reader(kernel)
    await kernel.call_tool(proc.pid, "now", {})
    before = kernel.store.head_seq
    await kernel.call_tool(proc.pid, "now", {})
    call, now = _since(kernel, proc.pid, before)
    assert [(r["phase"], r["syscall"]) for r in (call, now)] == [
        ("intent+outcome", "tool.call"), ("intent+outcome", "clock.now")]
    assert now["inv"] == call["seq"] and call["detail"]["result"] == now["detail"]["result"]
