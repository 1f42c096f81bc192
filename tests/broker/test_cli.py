"""The `libos` command, run for real: demo, ps, audit, caps, --json, --db."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from broker import Kernel
from broker.cli import main
from sandboxes.pyodide import pyodide_available
from tests.conftest import bare_env, open_image

LIBOS = [sys.executable, "-m", "broker.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIBOS, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env=bare_env(COLUMNS="80"))


def test_demo_tells_the_story_and_is_deterministic() -> None:
    first, second = run("demo"), run("demo")
    assert first.returncode == 0, first.stderr
    out = first.stdout
    # Tools written at run time, in two (three, with Pyodide) languages, and used.
    assert "registered word_count (ts)" in out and "registered checksum (wat)" in out
    assert '{"words": 12}' in out and '3613530589' in out  # the Adler-32 of the README
    if pyodide_available():  # `libos setup` ran (CI runs it): the Python tool too
        assert "registered summarize (python)" in out and '"points": 3' in out
    # The escape attempts all fail.
    assert out.count("escape attempt") == 4 and "ESCAPED" not in out
    # A narrower child: denied, asks, approved once, refused the second time.
    assert "NOT_CAPABLE no" in out and "/secrets/token.txt" in out
    assert "answered once" in out
    assert "APPROVAL_DENIED" in out and "answered deny" in out
    # A crash and a resume that repeats nothing.
    assert "kill -9 → broker exited with signal 9" in out
    assert "night-shift: exited, result 'shift over'" in out
    assert "started\\nhalf done\\nfinished" in out
    assert "└── 2 analyst:1 exited" in out and "3 night-shift:1 exited" in out
    assert "audit chain verified" in out
    assert second.stdout == out
    if pyodide_available():  # the README shows the transcript as it is now
        readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
        shown = readme[readme.index("## What the demo shows"):]
        shown = shown[shown.index("```\n") + 4:]
        assert shown[:shown.index("\n```\n")] == out.strip("\n")


async def test_demo_refuses_to_overwrite_a_store(tmp_path: Path) -> None:
    # A store made in-process: a whole demo into `--db` is run (and must succeed) below.
    db = tmp_path / "d.db"
    await _populate(db)
    again = run("demo", "--db", str(db))
    assert again.returncode == 2 and "exists" in again.stderr


def test_demo_refuses_a_store_path_that_is_a_dangling_link(tmp_path: Path) -> None:
    """`--db` naming a link to nowhere is refused like an existing file: the store is never
    made through it (where it points, outside what the person named). A fresh path beside it
    is taken."""
    target, link = tmp_path / "elsewhere" / "planted.db", tmp_path / "d.db"
    target.parent.mkdir()
    link.symlink_to(target)
    refused = run("demo", "--db", str(link))
    assert refused.returncode == 2 and "CONFLICT" in refused.stderr and "exists" in refused.stderr
    assert not target.exists() and link.is_symlink()
    taken = run("demo", "--db", str(tmp_path / "fresh.db"))
    assert taken.returncode == 0, taken.stderr


def test_demo_leaves_at_once_with_nothing_lost(tmp_path: Path) -> None:
    """The demo's process ends right after its last line, without the interpreter's teardown
    (an exit handler registered before it never runs), its output whole and its store
    closed: the audit of the store it made verifies from another process. The WASM modules
    it compiled are kept in the user's cache directory for the next demo."""
    db, cache = tmp_path / "d.db", tmp_path / "cache"
    code = ("import atexit, sys; atexit.register(print, 'TEARDOWN', file=sys.stderr); "
            "from broker.cli import entry; sys.exit(entry())")
    done = subprocess.run([sys.executable, "-c", code, "demo", "--db", str(db)],
                          capture_output=True, text=True, timeout=120,
                          env=bare_env(COLUMNS="80", XDG_CACHE_HOME=str(cache)))
    assert done.returncode == 0, done.stderr
    assert "TEARDOWN" not in done.stderr
    assert done.stdout.rstrip("\n").splitlines()[-1].startswith("audit chain verified")
    verified = run("audit", "--verify", "--db", str(db))
    assert verified.returncode == 0, verified.stderr
    # the guest library and the checksum tool, compiled
    assert len(list((cache / "libos" / "demo" / "wasm-cache").glob("modules-*/*.cwasm"))) >= 2


async def _populate(db: Path) -> int:
    async with Kernel.open(db) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/a/**:read"])
        with pytest.raises(Exception):  # noqa: B017 - any denial will do
            await kernel.call_tool(pid, "read_file", {"path": "/b"})
        return pid


async def test_ps_audit_caps_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "x.db"
    pid = await _populate(db)
    assert main(["ps", "--db", str(db), "--json"]) == 0
    procs = json.loads(capsys.readouterr().out)
    assert [(p["pid"], p["image"], p["state"]) for p in procs] == [(pid, "agent", "runnable")]
    assert main(["--db", str(db), "audit", "--json", "--pid", str(pid)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["phase"], r["syscall"]) for r in records] == [
        ("admin", "host.spawn"), ("intent", "tool.call"), ("denied", "fs.read"),
        ("outcome", "tool.call")]
    assert main(["caps", str(pid), "--db", str(db), "--json"]) == 0
    caps = json.loads(capsys.readouterr().out)
    assert {(c["kind"], c["scope"]) for c in caps} == {("fs", "/a/**"), ("obj", f"proc/{pid}")}
    assert main(["audit", "--verify", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


async def test_tables_for_people(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    await _populate(db)
    ps = run("ps", "--db", str(db))
    assert ps.returncode == 0 and "agent:1" in ps.stdout and "runnable" in ps.stdout
    audit = run("audit", "--db", str(db))
    assert "denied" in audit.stdout and "fs.read" in audit.stdout


def test_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    missing = run("ps", "--db", str(tmp_path / "none.db"))
    assert missing.returncode == 2 and "no store" in missing.stderr
    assert "Traceback" not in missing.stderr
    not_a_store = tmp_path / "notes.db"
    not_a_store.write_text("this is not a database\n" * 100)
    for command in (["ps"], ["audit", "--verify"], ["caps", "1"], ["approvals"]):
        result = run(*command, "--db", str(not_a_store))
        assert result.returncode == 2, command
        assert "INVALID_ARGUMENT" in result.stderr and "not a libos store" in result.stderr
        assert "Traceback" not in result.stderr
    assert not_a_store.read_text().startswith("this is not a database")  # left as it was


async def test_opening_a_kernel_on_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    from broker import InvalidArgument

    bad = tmp_path / "x.db"
    bad.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(InvalidArgument):
        async with Kernel.open(bad):
            pass
    async with Kernel.open(tmp_path / "good.db"):  # and nothing was left locked or broken
        pass


async def test_unknown_pid_for_caps(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    await _populate(db)
    result = run("caps", "99", "--db", str(db))
    assert result.returncode == 2 and "NOT_FOUND" in result.stderr
