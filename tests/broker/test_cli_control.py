"""`libos pause`, `resume`, `kill` and `resume --all`, run as real commands against a store
that a broker holds (or that none does)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from broker import Kernel, NotCapable
from tests.conftest import open_image

# Long enough to outlive a loaded machine's CLI start-ups (the test kills it when done).
TICKER = {"kind": "scripted", "actions": [{"tool": "sleep", "args": {"seconds": 0.05}}] * 2000}


async def libos(*args: str) -> dict:
    done = await trio.run_process([sys.executable, "-m", "broker.cli", *args, "--json"],
                                  capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


async def test_pause_resume_kill_a_process_of_a_running_broker(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "ticker", planner=TICKER)
        pid = kernel.spawn("ticker", caps=["clock:*:sleep"])
        paused = await libos("pause", str(pid), "--db", str(db_path))
        assert paused["applied"] is True
        with trio.fail_after(10):  # the step in flight ends; then it holds
            while kernel.process(pid).state.value != "paused":
                await trio.sleep(0.02)
        steps = len(kernel.process(pid).history)
        await trio.sleep(0.3)
        assert len(kernel.process(pid).history) == steps
        resumed = await libos("resume", str(pid), "--db", str(db_path))
        assert resumed["applied"] is True
        with trio.fail_after(10):
            while len(kernel.process(pid).history) == steps:
                await trio.sleep(0.02)
        killed = await libos("kill", str(pid), "--db", str(db_path))
        assert killed["state"] == "killed"
        controls = [(r["phase"], r["pid"], r["detail"]) for r in kernel.audit()
                    if r["syscall"] == "proc.signal"]
        assert controls == [("admin", pid, {"signal": verb, "who": "cli"})
                            for verb in ("pause", "resume", "kill")]
        assert kernel.verify_audit()[1] == []


async def test_a_parent_cannot_undo_libos_pause(db_path: Path) -> None:
    """The reproduction: after `libos pause CHILD`, the parent resumed it with proc.signal."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "ticker", planner=TICKER)
        await open_image(kernel, "parent", tools=("spawn", "signal"),
                         needs=("proc:*:spawn", "clock:*:sleep"))
        parent = kernel.spawn("parent", caps=["proc:ticker:spawn", "clock:*:sleep"])
        child = await kernel.call_tool(parent, "spawn", {"image": "ticker",
                                                         "caps": ["clock:*:sleep"]})
        paused = await libos("pause", str(child), "--db", str(db_path))
        assert paused["applied"] is True
        with trio.fail_after(5):
            while kernel.process(child).state.value != "paused":
                await trio.sleep(0.02)
        with pytest.raises(NotCapable):
            await kernel.call_tool(parent, "signal", {"pid": child, "signal": "resume"})
        denied = [r for r in kernel.audit(parent) if r["syscall"] == "proc.signal"]
        assert [r["phase"] for r in denied] == ["denied"]
        assert denied[0]["detail"]["error"] == "NOT_CAPABLE"
        steps = len(kernel.process(child).history)
        await trio.sleep(0.3)
        assert len(kernel.process(child).history) == steps  # still held
        resumed = await libos("resume", str(child), "--db", str(db_path))
        assert resumed["applied"] is True
        with trio.fail_after(5):
            while len(kernel.process(child).history) == steps:
                await trio.sleep(0.02)
        kernel.kill(child)


async def test_a_pause_queued_while_no_broker_runs_holds_before_any_step(
        db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "ticker", planner=TICKER)
        pid = kernel.spawn("ticker", caps=["clock:*:sleep"])
        await trio.testing.wait_all_tasks_blocked()
    queued = await libos("pause", str(pid), "--db", str(db_path), "--wait", "0")
    assert queued["applied"] is False
    async with Kernel.open(db_path) as kernel:
        await trio.sleep(0.2)
        proc = kernel.process(pid)
        assert proc.state.value == "paused"
        steps = len(proc.history)
        await trio.sleep(0.2)
        assert len(proc.history) == steps


async def test_resume_all_recovers_and_runs_every_process(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "short", planner={"kind": "scripted", "actions": [
            {"tool": "sleep", "args": {"seconds": 0.05}}] * 3})
        pids = [kernel.spawn("short", caps=["clock:*:sleep"]) for _ in range(5)]
        await trio.testing.wait_all_tasks_blocked()
    outcome = await libos("resume", "--all", "--db", str(db_path), "--for", "20")
    assert outcome["resumed"] == pids
    assert [(p["pid"], p["image"], p["state"], p["exit_code"])
            for p in outcome["processes"]] == [(pid, "short", "exited", 0) for pid in pids]


def test_a_control_for_an_ended_process_is_refused_with_why(db_path: Path) -> None:
    """Refused at once when the store says it has ended; answered by the broker's poll when it
    ends while the command waits (a request nobody will apply is not left pending)."""
    import sqlite3
    import subprocess

    from broker.store.opening import open_store

    store = open_store(db_path)
    try:
        ended = store.insert_process(parent=None, image="a", version="1", state="exited",
                                     root="/", cwd="/")
        live = store.insert_process(parent=None, image="a", version="1", state="running",
                                    root="/", cwd="/")
        command = [sys.executable, "-m", "broker.cli", "--db", str(db_path)]
        done = subprocess.run([*command, "kill", str(ended)], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 2
        assert done.stderr.strip() == f"CONFLICT: process {ended} has ended (exited)"
        waiting = subprocess.Popen([*command, "pause", str(live), "--wait", "60"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not sqlite3.connect(db_path).execute(
                    "SELECT id FROM control WHERE pid=?", (live,)).fetchall():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            store.update_process(live, state="exited")  # it ends before any broker takes it
            assert store.take_controls(set()) == []  # a broker's poll: answered
            out, err = waiting.communicate(timeout=30)
        finally:
            waiting.kill()
        assert waiting.returncode == 2, out
        assert err.strip() == f"CONFLICT: process {live} has ended (exited)"
        assert "Traceback" not in err
    finally:
        store.close()


async def test_libos_kill_of_an_ended_parent_kills_the_children_it_left_running(
        db_path: Path) -> None:
    """As the host's `kill` does (`tree_kill`): the operator's kill of a tree whose root has
    ended was refused ("has ended") and its children went on running."""
    from broker import CallTool, Exit, ScriptedPlanner

    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "ticker", planner=TICKER)
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=["proc:ticker:spawn", "clock:*:sleep"],
                              planner=ScriptedPlanner([CallTool("spawn", {
                                  "image": "ticker", "caps": ["clock:*:sleep"]}), Exit(0)]))
        assert (await kernel.wait(parent, timeout=10))["state"] == "exited"
        [child] = kernel.store.children_of(parent)
        assert kernel.process(child).alive
        killed = await libos("kill", str(parent), "--db", str(db_path))
        assert killed["applied"] is True
        # It said so once what it killed had ended: the store has the child killed by then.
        assert kernel.store.get_process(child)["state"] == "killed"
        status = await kernel.wait(child, timeout=10)
        assert status["state"] == "killed" and "parent" in status["reason"]
        assert [r["detail"] for r in kernel.audit() if r["syscall"] == "proc.signal"] == [
            {"signal": "kill", "who": "cli"}]


@pytest.mark.parametrize("row", [
    {"error": "\x1b]0;owned\x07[blink]CONFLICT", "message": "fine\nOK: forked 7\x1b[2K"},
    {"pid": "7\x1b[2J\nnew process 8"}])
def test_libos_fork_shows_its_rows_answer_inert(db_path: Path, row: dict) -> None:
    """The answer is a row anyone who writes the database may write: its error code and pid
    went out as rich markup, terminal escapes and line breaks and all."""
    def answer(db: Any, pid: int) -> None:
        db.execute("UPDATE control SET done=?, result=? WHERE pid=?",
                   (time.time(), json.dumps(row), pid))

    returncode, out, err = answered_by_hand(db_path, "fork", answer)
    assert "\x1b" not in out + err and "\x07" not in out + err, out
    assert len(out.strip().splitlines()) == 1, out
    assert returncode == (2 if "error" in row else 0), err


async def test_a_resume_the_broker_refuses_is_reported_not_called_applied(
        db_path: Path) -> None:
    """The broker refused it (the process is not paused): the command hears the typed error
    the broker recorded, where it used to say `resume N: running` and exit 0."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "ticker", planner=TICKER)
        pid = kernel.spawn("ticker", caps=["clock:*:sleep"])
        done = await trio.run_process(
            [sys.executable, "-m", "broker.cli", "resume", str(pid), "--db", str(db_path)],
            capture_stdout=True, capture_stderr=True, check=False)
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert b"CONFLICT" in done.stderr and b"not paused" in done.stderr
        rejected = [r for r in kernel.audit() if r["syscall"] == "proc.signal"]
        assert [(r["phase"], r["detail"]["error"]) for r in rejected] == [
            ("rejected", "CONFLICT")]
        paused = await libos("pause", str(pid), "--db", str(db_path))  # the neighbour: works
        assert paused["applied"] is True and paused["state"] == "paused"


def answered_by_hand(db_path: Path, verb: str, answer: Callable[[Any, int], None]
                     ) -> tuple[int, str, str]:
    """`libos VERB PID` for a process row of its own, answered by `answer(db, pid)`: rows
    written by hand, as anyone who writes the database may. Its exit status and output."""
    import sqlite3
    import subprocess

    from broker.store.opening import open_store

    store = open_store(db_path)
    try:
        pid = store.insert_process(parent=None, image="a", version="1", state="running",
                                   root="/", cwd="/")
    finally:
        store.close()
    waiting = subprocess.Popen([sys.executable, "-m", "broker.cli", "--db", str(db_path),
                                verb, str(pid), "--wait", "60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        with sqlite3.connect(db_path) as db:
            while not db.execute("SELECT id FROM control WHERE pid=?", (pid,)).fetchall():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            answer(db, pid)
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    return waiting.returncode, out, err
