"""A request dies with its call: a cancelled call, a killed or exited process settles its
pending requests as cancelled (audited, in one transaction), and no answer to such a request
is taken, from this broker, from `libos approve` in another OS process, or by the next
broker. A broker that is only closing leaves a waiting request pending (see
test_approvals.py: the call resumes on it after a restart)."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import (
    ApprovalDenied,
    CallTool,
    Cancelled,
    Conflict,
    Kernel,
    NotCapable,
    ScriptedPlanner,
)
from broker.approvals.stored import answer_in_store
from broker.store import SQLiteStore
from tests.conftest import open_image

ASK_WRITE = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}
NEEDS = ("fs:/**:read,write", "clock:*:read,sleep")
WRITE = {"path": "/out/a.txt", "data": "hello"}


async def _proc(kernel: Kernel, planner: ScriptedPlanner | None = None) -> int:
    Path(kernel.fs.root, "out").mkdir(exist_ok=True)  # type: ignore[attr-defined]
    await open_image(kernel, needs=NEEDS)
    return kernel.spawn("agent", caps=[ASK_WRITE, "clock:*:sleep"], planner=planner)


async def _pending(kernel: Kernel, pid: int) -> dict[str, Any]:
    with trio.fail_after(5):
        while not [r for r in kernel.approvals() if r["pid"] == pid]:
            await trio.sleep(0.01)
    return next(r for r in kernel.approvals() if r["pid"] == pid)


async def _collect(results: list[Any], call: Any) -> None:
    try:
        results.append(await call)
    except BaseException as exc:
        results.append(exc)
        if isinstance(exc, trio.Cancelled):
            raise


def _settled(kernel: Kernel, request_id: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit() if r["detail"].get("request") == request_id
            and r["detail"].get("state") == "cancelled"]


async def _refused_then_neighbour(kernel: Kernel, request_id: str) -> None:
    """An answer to the dead request is refused and audited; a live process's request is
    still answered as ever."""
    before = len(kernel.audit())
    with pytest.raises(Conflict):
        kernel.approve(request_id, always=True)
    [refusal] = [r for r in kernel.audit()[before:] if r["phase"] == "rejected"]
    assert refusal["detail"]["request"] == request_id
    assert refusal["detail"]["error"] == "CONFLICT"
    other = await _proc(kernel)
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(other, "write_file", WRITE))
        kernel.approve((await _pending(kernel, other))["id"])
    assert results == [5]


async def test_cancelling_a_call_cancels_its_request(kernel: Kernel) -> None:
    pid = await _proc(kernel)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kernel.call_tool, pid, "write_file", WRITE)
        request = await _pending(kernel, pid)
        nursery.cancel_scope.cancel()  # e.g. an MCP client cancelled its tools/call
    assert kernel.process(pid).alive
    [row] = kernel.approvals(state=None)
    assert row["state"] == "cancelled"
    [record] = _settled(kernel, request["id"])
    assert record["phase"] == "admin" and record["detail"]["error"] == "CANCELLED"
    assert record["pid"] == pid and record["args_hash"] == request["args_hash"]
    await _refused_then_neighbour(kernel, request["id"])
    assert kernel.verify_audit()[1] == []


async def test_killing_a_process_cancels_its_requests_at_once(kernel: Kernel) -> None:
    pid = await _proc(kernel)
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        # Host calls (an MCP session's) are not cancelled by the kill: the request must
        # not wait for them to notice.
        for path in ("/out/a.txt", "/out/b.txt"):
            nursery.start_soon(_collect, results,
                               kernel.call_tool(pid, "write_file", {**WRITE, "path": path}))
        with trio.fail_after(5):
            while len(kernel.approvals()) < 2:
                await trio.sleep(0.01)
        requests = kernel.approvals()
        kernel.kill(pid, "mcp session ended")
        # Settled in the kill itself, before any waiter ran.
        assert [r["state"] for r in kernel.approvals(state=None)] == ["cancelled"] * 2
        assert kernel.store.get_process(pid)["state"] == "killed"
        with trio.fail_after(5):
            while len(results) < 2:
                await trio.sleep(0.01)
    assert all(isinstance(r, Cancelled) for r in results)
    kill = next(r["seq"] for r in kernel.audit() if r["syscall"] == "proc.signal"
                and r["detail"]["signal"] == "kill")
    for request in requests:
        [record] = _settled(kernel, request["id"])
        assert record["seq"] > kill and "killed" in record["detail"]["message"]
    await _refused_then_neighbour(kernel, requests[0]["id"])


async def test_an_exiting_process_takes_its_requests_with_it(kernel: Kernel) -> None:
    gate = trio.Event()

    async def plan(history: list[Any]) -> Any:
        await gate.wait()
        return CallTool("now", {}) if not history else __import__("broker").Exit(0)

    pid = await _proc(kernel, ScriptedPlanner(plan))
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(pid, "write_file", WRITE))
        request = await _pending(kernel, pid)
        gate.set()  # the planner exits while the host's call waits
        await kernel.wait(pid, timeout=5)
        with trio.fail_after(5):  # the waiting call ends with its request
            while not results:
                await trio.sleep(0.01)
    assert kernel.process(pid).state.value == "exited"
    assert isinstance(results[0], Cancelled)
    assert _settled(kernel, request["id"])
    await _refused_then_neighbour(kernel, request["id"])


async def libos(*args: str) -> tuple[int, str]:
    done = await trio.run_process([sys.executable, "-m", "broker.cli", *args],
                                  capture_stdout=True, capture_stderr=True, check=False)
    return done.returncode, (done.stdout + done.stderr).decode()


async def test_approve_always_from_the_cli_after_a_kill_is_refused(db_path: Path) -> None:
    """The reproduction: an MCP client disconnects mid-call, its process is killed, and
    `libos approve ID --always` was accepted; the next broker granted a standing allow to the
    dead pid."""
    async with Kernel.open(db_path) as kernel:
        pid = await _proc(kernel)
        live = await _proc(kernel)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, [], kernel.call_tool(pid, "write_file", WRITE))
            nursery.start_soon(_collect, [], kernel.call_tool(live, "write_file", WRITE))
            request = await _pending(kernel, pid)
            neighbour = await _pending(kernel, live)
            nursery.cancel_scope.cancel()  # the session's call is cancelled ...
        kernel.kill(pid, "mcp session ended")  # ... and its process killed
        live_request = neighbour["id"]
    # Neither request is pending now; a fresh one for the live process is, after a restart.
    code, out = await libos("approve", request["id"], "--always", "--db", str(db_path))
    assert code == 2 and "CONFLICT" in out
    async with Kernel.open(db_path) as kernel:
        assert not [c for c in kernel.capabilities(pid) if c["effect"] == "allow"
                    and c["kind"] == "fs"]
        assert kernel.store.get_approval(request["id"])["state"] == "cancelled"
        refusals = [r for r in kernel.audit() if r["phase"] == "rejected"
                    and r["detail"].get("request") == request["id"]]
        assert refusals and refusals[0]["detail"]["who"].startswith("cli:")
        assert refusals[0]["detail"]["error"] == "CONFLICT"
        assert kernel.store.get_approval(live_request)["state"] == "cancelled"
        # The neighbour: a live process's request answered from the CLI is honoured.
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, results, kernel.call_tool(live, "write_file", WRITE))
            fresh = await _pending(kernel, live)
            code, out = await libos("approve", fresh["id"], "--always", "--db", str(db_path))
            assert code == 0, out
        assert results == [5]
        assert [c for c in kernel.capabilities(live) if c["effect"] == "allow"
                and c["kind"] == "fs"]
        assert kernel.verify_audit()[1] == []


async def test_a_crash_between_the_end_and_the_cancel_still_grants_nothing(
        db_path: Path) -> None:
    """Defence in depth: a store where a process ended but its request was left pending (or
    answered, not yet applied), as an older broker or a crash could leave it."""
    async with Kernel.open(db_path) as kernel:
        pid = await _proc(kernel)
        await _proc(kernel)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kernel.call_tool, pid, "write_file", WRITE)
            nursery.start_soon(kernel.call_tool, pid, "write_file", {**WRITE, "data": "2"})
            with trio.fail_after(5):
                while len(kernel.approvals()) < 2:
                    await trio.sleep(0.01)
            first, second = kernel.approvals()
            kernel.closing = True  # as if the broker stopped here: both stay pending
            nursery.cancel_scope.cancel()
    # One answered while the process lived; then it "ended" with the requests still open.
    reader = SQLiteStore(db_path, writer=False)
    answer_in_store(reader, second["id"], "always", who="cli:someone", now=time.time())
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE processes SET state='killed' WHERE pid=?", (pid,))
    reader.close()
    code, out = await libos("approve", first["id"], "--always", "--db", str(db_path))
    assert code == 2 and "CONFLICT" in out and "ended" in out
    async with Kernel.open(db_path) as kernel:
        for request in (first, second):
            assert kernel.store.get_approval(request["id"])["state"] == "cancelled"
            assert _settled(kernel, request["id"])
        assert not [c for c in kernel.capabilities(pid) if c["effect"] == "allow"
                    and c["kind"] == "fs"]
        assert not [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                    and r["phase"] == "admin"]
        with pytest.raises(Conflict):
            kernel.approve(first["id"])
        with pytest.raises((NotCapable, ApprovalDenied, Conflict)):
            await kernel.call_tool(pid, "write_file", WRITE)  # a dead process runs nothing


async def test_an_answer_given_while_no_broker_runs_resumes_the_process(
        db_path: Path) -> None:
    """The neighbour of all the above: a process whose broker closed while it waited is
    alive, so an answer given meanwhile is applied when the next broker opens, and the
    process is started again and finishes the approved call."""
    plan = {"kind": "scripted", "actions": [
        {"tool": "write_file", "args": WRITE}, {"exit": 0, "result": "written"}]}
    async with Kernel.open(db_path) as kernel:
        Path(kernel.fs.root, "out").mkdir()  # type: ignore[attr-defined]
        await open_image(kernel, "writer", tools=("write_file",), needs=NEEDS, planner=plan)
        pid = kernel.spawn("writer", caps=[ASK_WRITE])
        request = await _pending(kernel, pid)
    code, out = await libos("approve", request["id"], "--db", str(db_path))
    assert code == 0, out
    async with Kernel.open(db_path) as kernel:
        status = await kernel.wait(pid, timeout=10)
        assert status["state"] == "exited" and status["result"] == "written"
        assert Path(kernel.fs.root, "out", "a.txt").read_text() == "hello"  # type: ignore[attr-defined]
