"""The `libos` command's errors, run for real: one line and a non-zero exit, never a
traceback; JSON under `--json`; every option explained, the defaults shown."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

import trio

from broker.cli import build_parser
from tests.conftest import bare_env

LIBOS = [sys.executable, "-m", "broker.cli"]


def libos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIBOS, *args], capture_output=True, text=True, timeout=timeout,
                          env=bare_env(COLUMNS="100"))


async def a_store(db: Path) -> None:
    """A store for `libos web` to serve: opened once, with a process in it (made in-process:
    a whole `libos demo`, as before, boots every sandbox; test_cli runs the demo)."""
    from broker import AgentImage, Kernel

    async with Kernel.open(db) as kernel:
        await kernel.register_image(AgentImage("host"))
        kernel.spawn("host")


def test_errors_are_json_under_json(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.db")
    for args in (["ps", "--db", missing, "--json"], ["--json", "--db", missing, "audit"],
                 ["--json", "caps", "notanumber"], ["--json", "nosuchcommand"],
                 ["--json", "approvals", "show"]):
        done = libos(*args)
        assert done.returncode == 2, args
        error = json.loads(done.stdout)  # the whole of stdout is one JSON object
        assert set(error) == {"error", "message"}, args
        assert error["error"] in ("NOT_FOUND", "INVALID_ARGUMENT"), args
        assert "Traceback" not in done.stderr and done.stderr == "", args
    # Without --json: one line on stderr, nothing on stdout.
    for args in (["ps", "--db", missing], ["caps", "notanumber"], ["nosuchcommand"]):
        done = libos(*args)
        assert done.returncode == 2 and done.stdout == "", args
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_a_path_the_machine_refuses_is_one_line(tmp_path: Path) -> None:
    """A store under a regular file (not a directory): the OS refuses; the command says so."""
    (tmp_path / "file").write_text("")
    image = tmp_path / "i.json"
    image.write_text(json.dumps({"name": "i", "tools": ["read_file"], "planner": {
        "kind": "scripted", "actions": []}}))
    done = libos("--db", str(tmp_path / "file" / "x.db"), "run", str(image), "--goal", "x")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("INVALID_ARGUMENT: Not a directory")


def test_a_busy_web_port_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    trio.run(a_store, db)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        done = libos("--db", str(db), "web", "--port", port)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert f"CONFLICT: port {port} on 127.0.0.1 is in use" in done.stderr
        as_json = libos("--db", str(db), "web", "--port", port, "--json")
        assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"] == "CONFLICT"


def _actions(parser: argparse.ArgumentParser, path: str = "libos"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_option_has_help_and_the_defaults_are_shown() -> None:
    missing = [f"{path} {action.dest}" for path, action in _actions(build_parser())
               if not action.help or action.help == argparse.SUPPRESS]
    assert missing == []
    web = libos("web", "--help")
    assert web.returncode == 0 and "8765" in web.stdout
    for command, default in (("fork", "3"), ("pause", "3"), ("resume", "3"),
                             ("audit", "0")):
        shown = libos(command, "--help").stdout
        assert f"default: {default}" in " ".join(shown.split()), command


async def test_web_under_json_says_where_it_serves_as_json(tmp_path: Path) -> None:
    import httpx

    db = tmp_path / "s.db"
    await a_store(db)
    web = await trio.lowlevel.open_process([*LIBOS, "--db", str(db), "web", "--port", "0",
                                            "--json"], stdout=subprocess.PIPE)
    try:
        assert web.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await web.stdout.receive_some(1)
        url = json.loads(line)["url"]
        async with httpx.AsyncClient(trust_env=False) as client:
            page = await client.get(url)
        assert page.status_code == 200 and "Nothing is waiting." in page.text
    finally:
        web.kill()
        await web.wait()


async def test_seconds_that_are_not_a_time_are_refused_before_anything_runs(
        tmp_path: Path) -> None:
    """`--for nan` (or -1) was taken: `libos resume --all` opened the store, resumed every
    process, then ended in an INTERNAL ValueError from trio's sleep (exit 70, a broker that
    did work and a command that said it failed). NaN passes no comparison; infinity and a
    negative are no time either. Now each such option is refused as usage, before anything
    runs; a good value still works."""
    db = tmp_path / "libos.db"
    await a_store(db)
    for args in (["resume", "--all", "--for", "nan"], ["resume", "--all", "--for", "-1"],
                 ["resume", "--all", "--wait", "inf"], ["pause", "1", "--wait", "nan"],
                 ["serve", "--lease", "nan"], ["serve", "--for", "inf"],
                 ["run", "host", "--goal", "g", "--timeout", "nan"]):
        done = libos("--db", str(db), *args)
        assert done.returncode == 2 and done.stdout == "", (args, done.stdout, done.stderr)
        assert "INVALID_ARGUMENT" in done.stderr and "seconds" in done.stderr, args
        assert "Traceback" not in done.stderr
    assert libos("--db", str(db), "resume", "--all", "--for", "0.5").returncode == 0
