"""`libos resume --all` says what it resumed, when a process waits for a person (with the
command that answers), and how each ended; on a terminal a status line counts what still
runs, and a pipe gets only the lines. Run for real, piped and on a pseudo-terminal."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import trio
import trio.testing

from broker import Kernel
from tests.broker.kernel.test_approvals import ASK_WRITE
from tests.broker.terminal import read_to_end, read_until, run_on_terminal, run_piped
from tests.conftest import bare_env, open_image

LIBOS = [sys.executable, "-m", "broker.cli"]
ENV = bare_env(COLUMNS="80")  # narrower than a command
SLEEPS = {"kind": "scripted", "actions": [{"tool": "sleep", "args": {"seconds": 0.1}}] * 8}
ASKS = {"kind": "scripted", "actions": [
    {"tool": "write_file", "args": {"path": "/out/report.txt", "data": "done",
                                    "reason": "file the report\x1b[2J"}}]}
FOREVER = {"kind": "scripted", "actions": [{"tool": "sleep", "args": {"seconds": 0.1}}] * 9999}


async def _leave_running(db: Path) -> dict[str, int]:
    """A broker that starts processes and goes away while they run."""
    async with Kernel.open(db) as kernel:
        Path(kernel.fs.root, "out").mkdir()  # type: ignore[attr-defined]
        await open_image(kernel, "sleeper", planner=SLEEPS)
        await open_image(kernel, "asker", planner=ASKS, needs=("fs:/out/**:write",))
        await open_image(kernel, "tools", tools=("read_file",), needs=("fs:/**:read",))
        pids = {"sleeper": kernel.spawn("sleeper", caps=["clock:*:sleep"]),
                "asker": kernel.spawn("asker", caps=[ASK_WRITE]),
                "tools": kernel.spawn("tools", caps=["fs:/**:read"])}
        await trio.testing.wait_all_tasks_blocked()
    return pids


async def test_resume_all_says_what_it_resumed_who_waits_and_how_each_ended(
        db_path: Path) -> None:
    pids = await _leave_running(db_path)
    argv = [*LIBOS, "--db", str(db_path), "resume", "--all", "--for", "60"]
    broker = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, env=ENV)
    try:
        assert broker.stdout is not None
        # Until it says how to answer the person it waits for.
        text = (await read_until(broker.stdout, rb"libos --db \S+ approve apr_[0-9a-f]+ ")
                ).decode()
        command = re.search(r"libos (--db \S+ approve apr_[0-9a-f]+)", text)
        assert command is not None
        answered = await trio.run_process([*LIBOS, *command.group(1).split()],
                                          capture_stdout=True, env=ENV)
        assert b": approved (once)" in answered.stdout
        rest = await read_to_end(broker.stdout)
        with trio.fail_after(10):
            await broker.wait()
    finally:
        if broker.returncode is None:
            broker.kill()
            await broker.wait()
    text += rest.decode()
    assert broker.returncode == 0
    lines = text.splitlines()
    assert lines[0] == "resumed 3 processes:"
    assert lines[1].startswith(f"  {pids['sleeper']} sleeper:1 (from step ")
    assert lines[2] == f"  {pids['asker']} asker:1 (from step 0)"
    assert lines[3] == (f"  {pids['tools']} tools:1 (no planner: its host drives it, nothing "
                        "runs it here)")
    notice = text[text.index(f"process {pids['asker']} waits for a person"):]
    assert notice.startswith(f"process {pids['asker']} waits for a person: fs.write on "
                             "/out/report.txt (reason: file the report\\u001b[2J)")
    assert "\x1b" not in text  # inert, and no status line in a pipe
    assert f"libos --db {db_path} approvals show apr_" in notice
    for name in ("sleeper", "asker"):
        assert f"process {pids[name]} {name}:1 exited (exit 0)" in text
    assert "still running" not in text
    assert Path(db_path.with_name("libos-fs"), "out/report.txt").read_text() == "done"


async def test_on_a_terminal_a_status_line_counts_what_still_runs(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    async with Kernel.open(db) as kernel:
        await open_image(kernel, "sleeper", planner=SLEEPS)
        await open_image(kernel, "forever", planner=FOREVER)
        done = kernel.spawn("sleeper", caps=["clock:*:sleep"])
        left = kernel.spawn("forever", caps=["clock:*:sleep"])
        await trio.testing.wait_all_tasks_blocked()
    argv = [*LIBOS, "--db", str(db), "resume", "--all", "--for", "3"]
    status, shown = await trio.to_thread.run_sync(lambda: run_on_terminal(argv, ENV))
    assert status == 0, shown
    assert "of 2 still running" in shown and "1 of 2 still running" in shown
    assert f"process {done} sleeper:1 exited (exit 0)" in shown
    assert f"still running after 3 s (the next broker resumes it): {left} forever:1" in shown
    # The same, piped: the lines, and no status line.
    async with Kernel.open(db) as kernel:
        await trio.testing.wait_all_tasks_blocked()
    piped = await trio.to_thread.run_sync(lambda: run_piped(argv, ENV))
    assert piped.returncode == 0
    assert "still running after 3 s" in piped.stdout and piped.stderr == ""
    assert "of 1 still running" not in piped.stdout and "\x1b" not in piped.stdout
