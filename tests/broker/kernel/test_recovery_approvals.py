"""A process waiting for a person when the broker is killed is still waiting after the
restart, on the same request, and an answer given after the restart resumes it; a one-shot
grant spent before a crash stays spent."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import trio

from broker import Kernel

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
