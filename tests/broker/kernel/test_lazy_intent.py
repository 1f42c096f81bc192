"""A lazy `tool.call` intent (`broker.kernel.read_commit`): held for the tool's first effect,
or committed with its outcome when it had none. The world is reached only after the call's
intent is durable (a host tool looks from a second connection); a sandboxed tool's read is
answered only after its record and the call's intent are committed; a crash while the intent
is held loses a call that did nothing, and the resumed process does every step once.
Real SQLite, real Deno."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, HostCall, Kernel, host_tool
from sandboxes.deno import DenoSandbox
from tests.broker.kernel.crashing import crash_after, crashing
from tests.broker.kernel.traced_sql import audit_inserts
from tests.conftest import open_image

NOOP = "export default async function run() { return 7; }"
READER = """
export default async function run(args: any, libos: any) {
  return await libos.fs.read("/data/note.txt");
}
"""
MAILER = """
export default async function run(args: any, libos: any) {
  return await libos.tool.call("witness", { to: "bob@example.com" });
}
"""


@host_tool(kind="email", right="send", resource=lambda args: args["to"])
def witness(call: HostCall, to: str) -> list[list[Any]]:
    """What another connection sees of the calling process's audit as the world is reached."""
    with sqlite3.connect(call.state) as other:
        rows = other.execute("SELECT seq, inv, phase, syscall FROM audit WHERE pid=? ORDER BY"
                             " seq", (call.pid,)).fetchall()
    return [list(r) for r in rows]


def _transactions(seen: list[str]) -> list[list[str]]:
    """Audit inserts (`phase syscall`) grouped by the commit that made them durable."""
    done: list[list[str]] = []
    current: list[str] | None = None
    for sql in seen:
        word = sql.split()[0].upper()
        if word == "BEGIN":
            current = []
        elif word == "COMMIT" and current is not None:
            done.append(current)
            current = None
        elif sql.startswith("INSERT INTO audit"):  # (one statement: one commit, or in one)
            rows = audit_inserts(sql)
            done.append(rows) if current is None else current.extend(rows)
    return done


def _trace(kernel: Kernel) -> list[str]:
    seen: list[str] = []
    kernel.store._db.set_trace_callback(seen.append)  # type: ignore[attr-defined]
    return seen


async def test_the_world_is_reached_only_after_the_call_is_durable(db_path: Path) -> None:
    async with Kernel.open(db_path, host_tools=[witness], host_state=str(db_path)) as kernel:
        await kernel.register_image(AgentImage("w", tools=("witness",), needs=["email:*:send"]))
        pid = kernel.spawn("w", caps=["email:*:send"])
        seen = _trace(kernel)
        rows = await kernel.call_tool(pid, "witness", {"to": "bob@example.com"})
        call, effect = rows[-2:]
        assert call[2:] == ["intent", "tool.call"] and call[1] is None
        assert effect[2:] == ["intent", "host.witness"] and effect[1] == call[0]
        # The held intent went with the effect's, in one commit; then the two outcomes.
        assert _transactions(seen) == [["intent tool.call", "intent host.witness"],
                                       ["outcome host.witness"], ["outcome tool.call"]]
        assert kernel.verify_audit()[1] == []


@pytest.fixture
async def deno_kernel(db_path: Path) -> Any:
    async with DenoSandbox(spares=1, check_timeout=10.0) as deno, Kernel.open(
            db_path, sandboxes=[deno], host_tools=[witness], host_state=str(db_path)) as kernel:
        root = Path(kernel.fs.root)  # type: ignore[attr-defined]
        (root / "data").mkdir()
        (root / "data" / "note.txt").write_text("hello")
        await kernel.register_image(AgentImage(
            "ts", tools=("register_tool", "witness"),
            needs=["tool:*:register,call", "fs:/data/**:read", "email:*:send"]))
        yield kernel


async def _ts_tool(kernel: Kernel, source: str, *caps: str) -> int:
    pid = kernel.spawn("ts", caps=["tool:ts:register", *caps])
    await kernel.call_tool(pid, "register_tool", {"name": "t", "lang": "ts", "source": source})
    return pid


async def test_a_sandboxed_tool_with_no_effect_is_one_commit(deno_kernel: Kernel) -> None:
    pid = await _ts_tool(deno_kernel, NOOP)
    assert await deno_kernel.call_tool(pid, "t", {}) == 7  # (its source is read, once)
    # The anchor's signing tick (every 50 ms) commits what waits too: on a loaded machine it
    # may fall inside a call, so a few calls are made; without the lazy intent none is one.
    commits = []
    for _ in range(5):
        seen = _trace(deno_kernel)
        assert await deno_kernel.call_tool(pid, "t", {}) == 7
        commits.append(_transactions(seen))
    # (Since onecall: a call with no effect is one record, its intent and outcome.)
    assert [["intent+outcome tool.call"]] in commits, commits
    whole = deno_kernel.audit(pid)[-1]
    assert whole["phase"] == "intent+outcome" and whole["detail"]["ok"] is True
    assert deno_kernel.verify_audit()[1] == []


async def test_a_sandboxed_read_is_answered_after_its_call_is_durable(
        deno_kernel: Kernel) -> None:
    pid = await _ts_tool(deno_kernel, READER, "fs:/data/**:read")
    assert await deno_kernel.call_tool(pid, "t", {}) == "hello"  # (the file's labels, once)
    commits = []
    for _ in range(5):  # (a signing tick may fall inside a call: see above)
        seen = _trace(deno_kernel)
        assert await deno_kernel.call_tool(pid, "t", {}) == "hello"
        commits.append(_transactions(seen))
    # The read's answer left for the sandbox with its record, the call's intent before it.
    assert [["intent tool.call", "intent+outcome fs.read"],
            ["outcome tool.call"]] in commits, commits


async def test_nested_calls_are_durable_in_order_before_the_world_is_reached(
        deno_kernel: Kernel) -> None:
    pid = await _ts_tool(deno_kernel, MAILER, "email:*:send")
    rows = await deno_kernel.call_tool(pid, "t", {})
    outer, inner, effect = rows[-3:]
    assert [r[2:] for r in rows[-3:]] == [["intent", "tool.call"], ["intent", "tool.call"],
                                          ["intent", "host.witness"]]
    assert outer[1] is None and inner[1] == outer[0] and effect[1] == inner[0]
    assert deno_kernel.verify_audit()[1] == []


STEPS = {"kind": "scripted", "actions": [
    {"tool": "write_file", "args": {"path": "/out/log.txt", "data": "a\n", "append": True}},
    {"tool": "now", "args": {}},
    {"tool": "write_file", "args": {"path": "/out/log.txt", "data": "b\n", "append": True}},
    {"exit": 0}]}


async def test_a_crash_while_a_call_is_held_does_every_step_once(db_path: Path) -> None:
    """The broker dies right after the `now` step's intent is held (nothing of it is on
    disk, every later write fails): the resumed process neither repeats the first write nor
    loses a step."""
    started: list[int] = []

    async def body(kernel: Kernel) -> None:
        Path(kernel.fs.root, "out").mkdir()  # type: ignore[attr-defined]
        await open_image(kernel, needs=("fs:/out/**:write", "clock:*:read"),
                         tools=("write_file", "now"), planner=STEPS)
        started.append(kernel.spawn("agent", caps=["fs:/out/**:write", "clock:*:read"]))

    # (Since onecall the held record is in memory only: the broker dies as it would write
    # the `now` call's whole record, nothing of the call on disk.)
    undo = crash_after("append_call", lambda _, record, *__, **___: (
        record.syscall == "tool.call" and record.resource == "now"), before=True)
    try:
        await crashing(db_path, body)
    finally:
        undo()
    [pid] = started
    log = Path(db_path.parent, "libos-fs", "out", "log.txt")
    assert log.read_text() == "a\n"
    async with Kernel.open(db_path) as kernel:
        assert (await kernel.wait(pid, timeout=10))["state"] == "exited"
        assert log.read_text() == "a\nb\n"
        calls = [r for r in kernel.audit(pid) if r["syscall"] == "tool.call"
                 and r["phase"] in ("outcome", "intent+outcome")]  # (`now`'s: whole)
        assert [c["resource"] for c in calls] == ["write_file", "now", "write_file"]
        assert all(c["detail"]["ok"] for c in calls)
        assert kernel.verify_audit()[1] == []
