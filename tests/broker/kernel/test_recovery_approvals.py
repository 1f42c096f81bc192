"""A process waiting for a person when the broker is killed is still waiting after the
restart, on the same request, and an answer given after the restart resumes it; a one-shot
grant spent before a crash stays spent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from broker import Kernel
from broker.approvals.stored import answer_in_store
from broker.errors import Conflict
from broker.store import SQLiteStore
from tests.conftest import approve_a_call

ROOT = Path(__file__).resolve().parents[3]

BROKER = """
import sys, trio
from pathlib import Path
from broker import AgentImage, Kernel
async def main(db):
    async with Kernel.open(db) as kernel:
        await kernel.register_image(AgentImage("writer", tools=("write_file",),
            needs=("fs:/out/**:write",), planner={"kind": "scripted", "actions": [
                {"tool": "write_file", "args": {"path": "/out/report.md", "data": "v1",
                                                "reason": "publish"}},
                {"exit": 0, "result": "published"}]}))
        Path(kernel.fs.root, "out").mkdir()
        pid = kernel.spawn("writer", caps=[{"kind": "fs", "scope": "/out/**",
                                            "rights": ["write"], "effect": "ask"}])
        while not kernel.approvals():
            await trio.sleep(0.01)
        print("ASKED", pid, kernel.approvals()[0]["id"], flush=True)
        await trio.sleep_forever()
trio.run(main, sys.argv[1])
"""


async def test_waiting_for_a_person_survives_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    broker = subprocess.Popen([sys.executable, "-c", BROKER, str(db)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert broker.stdout is not None
    word, pid_text, request = broker.stdout.readline().split()
    assert word == "ASKED"
    broker.send_signal(signal.SIGKILL)
    broker.wait()
    pid = int(pid_text)
    async with Kernel.open(db) as kernel:
        with trio.fail_after(5):
            while kernel.process(pid).state.value != "waiting":
                await trio.sleep(0.01)
        pending = kernel.approvals()
        assert [r["id"] for r in pending] == [request]  # the same request, not a second one
        assert not (tmp_path / "a-fs" / "out" / "report.md").exists()
        kernel.approve(request)
        status = await kernel.wait(pid, timeout=5)
        assert status["state"] == "exited" and status["result"] == "published"
        assert (tmp_path / "a-fs" / "out" / "report.md").read_text() == "v1"
        writes = [r for r in kernel.audit(pid) if r["syscall"] == "fs.write"]
        intent = next(r for r in writes if r["phase"] == "intent")
        assert intent["detail"].get("approval") == request or intent["cap_id"]
        assert kernel.verify_audit()[1] == []
    # The one-shot grant is spent: after another restart nothing can use it again.
    async with Kernel.open(db) as kernel:
        grants = [c for c in kernel.capabilities(pid) if c.get("uses")]
        assert grants == []


HOST_CALL = """
import sys, trio
from pathlib import Path
from broker import AgentImage, Kernel
ASK = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}
async def main(db):
    async with Kernel.open(db) as kernel:
        await kernel.register_image(AgentImage("hosted", tools=("write_file",),
            needs=("fs:/out/**:write",)))
        await kernel.register_image(AgentImage("writer", tools=("write_file",),
            needs=("fs:/out/**:write",), planner={"kind": "scripted", "actions": [
                {"tool": "write_file", "args": {"path": "/out/step.txt", "data": "step"}},
                {"exit": 0, "result": "written"}]}))
        Path(kernel.fs.root, "out").mkdir()
        hosted = kernel.spawn("hosted", caps=[ASK])
        writer = kernel.spawn("writer", caps=[ASK])
        async with trio.open_nursery() as nursery:
            # A host's call (an MCP client's, say), waiting for a person when the broker dies.
            nursery.start_soon(kernel.call_tool, hosted, "write_file",
                               {"path": "/out/host.txt", "data": "host"})
            while len(kernel.approvals()) < 2:
                await trio.sleep(0.01)
            ids = {r["pid"]: r["id"] for r in kernel.approvals()}
            print("ASKED", hosted, ids[hosted], writer, ids[writer], flush=True)
            await trio.sleep_forever()
trio.run(main, sys.argv[1])
"""


async def test_a_request_of_a_call_the_crash_cut_off_dies_with_it(tmp_path: Path) -> None:
    """A host's call waits for approval when the broker is SIGKILLed: nothing will ever run
    it, so its request must not be left pending (on the page, in the CLI) nor be granted
    by an answer given meanwhile. A planner's step that runs again keeps its request."""
    db = tmp_path / "a.db"
    broker = subprocess.Popen([sys.executable, "-c", HOST_CALL, str(db)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert broker.stdout is not None
    word, hosted_text, host_request, writer_text, step_request = broker.stdout.readline().split()
    assert word == "ASKED"
    broker.send_signal(signal.SIGKILL)
    broker.wait()
    hosted, writer = int(hosted_text), int(writer_text)
    # With no broker running, a person approves the host's request for good (`libos approve
    # ID --always` writes the answer into the row; the next broker would apply it).
    answer_in_store(SQLiteStore(db, writer=False), host_request, "always", who="cli:test",
                    now=time.time())
    async with Kernel.open(db) as kernel:
        settled = next(r for r in kernel.approvals(None) if r["id"] == host_request)
        assert settled["state"] == "cancelled"
        record = [r for r in kernel.audit(hosted) if r["detail"].get("request") == host_request
                  and r["detail"].get("state") == "cancelled"]
        assert len(record) == 1 and record[0]["phase"] == "admin"
        assert not any(c["effect"] == "allow" and c["kind"] == "fs"
                       for c in kernel.capabilities(hosted))  # nothing granted
        with pytest.raises(Conflict):
            answer_in_store(SQLiteStore(db, writer=False), host_request, "once",
                            who="cli:test", now=time.time())
        with pytest.raises(Conflict):
            kernel.approve(host_request, always=True)
        # The neighbour: the planner's step runs again and waits on its same request.
        with trio.fail_after(10):
            while kernel.process(writer).state.value != "waiting":
                await trio.sleep(0.01)
        assert [r["id"] for r in kernel.approvals()] == [step_request]
        kernel.approve(step_request)
        assert (await kernel.wait(writer, timeout=10))["result"] == "written"
        # And a new call of the host's process asks anew, and runs once approved.
        await approve_a_call(kernel, hosted, "write_file",
                             {"path": "/out/host.txt", "data": "host"}, timeout=10)
        assert (tmp_path / "a-fs" / "out" / "host.txt").read_text() == "host"
        assert kernel.verify_audit()[1] == []
