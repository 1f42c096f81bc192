"""`libos images`, `libos image show NAME[@VERSION]`, `libos checkpoints PID` and `libos fork
PID [--checkpoint ID]`, run as real commands against a store (a broker holding it for fork)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from tests.conftest import open_image

SCRIPT = {"kind": "scripted", "actions": [
    {"tool": "now", "args": {}}, {"tool": "now", "args": {}},
    {"tool": "sleep", "args": {"seconds": 3600}}]}
# A description a hostile maker wrote: a terminal escape and a bidi override.
HOSTILE = "fine\x1b[2J\u202eevil"


async def libos(*args: str, code: int = 0) -> Any:
    done = await trio.run_process([sys.executable, "-m", "broker.cli", *args],
                                  capture_stdout=True, capture_stderr=True, check=False,
                                  env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == code, done.stderr.decode()
    return done.stdout.decode() if "--json" not in args else json.loads(done.stdout)


async def running(kernel: Kernel) -> int:
    await open_image(kernel, "job", planner=SCRIPT)
    pid = kernel.spawn("job", caps=["clock:*:read,sleep"])
    with trio.fail_after(10):
        while kernel.process(pid).state.value != "waiting":
            await trio.sleep(0.01)
    return pid


async def test_images_and_image_show(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        pid = await running(kernel)
        await open_image(kernel, "maker", needs=("image:*:register", "clock:*:read"),
                         tools=("register_image",))
        maker = kernel.spawn("maker", caps=["image:team.*:register", "clock:*:read"])
        for tools in (["now"], ["now", "sleep"]):
            await kernel.call_tool(maker, "register_image", {"image": {
                "name": "team.clock", "tools": tools, "needs": ["clock:*:read"],
                "description": HOSTILE}})
        kernel.commit_image(pid, "snap")
        checkpoint = kernel.store.checkpoint(pid)["id"]
    db = ("--db", str(db_path))
    listed = await libos("images", *db, "--json")
    assert [(i["name"], i["version"]) for i in listed] == [
        ("job", "1"), ("maker", "1"), ("snap", "1"), ("team.clock", "1"), ("team.clock", "2")]
    table = await libos("images", *db)
    assert "team.clock:2" in table and f"registered by pid {maker}" in table
    assert f"committed from pid {pid} at checkpoint {checkpoint}" in table

    newest = await libos("image", "show", "team.clock", *db, "--json")
    assert newest["version"] == "2" and newest["tools"] == ["now", "sleep"]
    assert (await libos("image", "show", "team.clock@1", *db, "--json"))["tools"] == ["now"]
    shown = await libos("image", "show", "snap", *db)
    assert f"committed from pid {pid} at checkpoint {checkpoint}" in shown
    assert "sleep" in shown and "clock" in shown and "scripted" in shown
    hostile = await libos("image", "show", "team.clock", *db)
    assert "\x1b" not in hostile and "\u202e" not in hostile and "\\u202e" in hostile
    # An unknown image or version is a typed error, not a traceback.
    missing = await libos("image", "show", "team.clock@7", *db, code=2)
    assert missing == ""


async def test_fork_and_checkpoints_against_a_running_broker(db_path: Path) -> None:
    db = ("--db", str(db_path))
    async with Kernel.open(db_path) as kernel:
        pid = await running(kernel)
        kept = await libos("checkpoints", str(pid), *db, "--json")
        assert [c["step"] for c in kept] == [0, 1, 1, 2, 2]
        older = next(c for c in kept if c["step"] == 1 and c["pending"] is None)
        forked = await libos("fork", str(pid), "--checkpoint", str(older["id"]), *db, "--json")
        assert forked["applied"] is True and forked["source"] == pid
        child = kernel.process(forked["pid"])
        assert child.parent == pid
        [record] = [r for r in kernel.audit(child.pid) if r["phase"] == "admin"]
        assert (record["detail"]["who"], record["detail"]["checkpoint"],
                record["detail"]["step"]) == ("cli", older["id"], 1)
        # It went on from there: the second `now`, then the sleep (the source's third step).
        with trio.fail_after(10):
            while child.state.value != "waiting":
                await trio.sleep(0.01)
        assert [o.action.name for o in child.history] == ["now", "now"]
        latest = await libos("fork", str(pid), *db, "--json")
        assert kernel.process(latest["pid"]).history[-1].action.name == "now"
        # A checkpoint that is not the process's: refused before anything is asked.
        await libos("fork", str(pid), "--checkpoint", "999999", *db, code=2)
        text = await libos("checkpoints", str(pid), *db)
        assert "sleep" in text  # the step in flight at the latest checkpoint
        kernel.kill(pid)
    # With no broker holding the store, the request waits for the next one.
    queued = await libos("fork", str(pid), *db, "--json", "--wait", "0")
    assert queued["applied"] is False
