"""`libos run` says when its process waits for a person: the request's id and the command
that answers it, which a person pastes (here: runs) to let the process go on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import trio

from tests.broker.corpus import assert_inert
from tests.broker.terminal import read_to_end, read_until
from tests.conftest import bare_env

LIBOS = [sys.executable, "-m", "broker.cli"]
ENV = bare_env(COLUMNS="80")  # narrower than a command
ASK = {"kind": "fs", "scope": "/notes/**", "rights": ["write"], "effect": "ask"}


def _image(tmp_path: Path, actions: list[dict]) -> Path:
    path = tmp_path / "notes.json"
    path.write_text(json.dumps({
        "name": "notes", "tools": ["write_file", "ask_human"],
        "needs": ["fs:/notes/**:write", "human:*:ask"],
        "planner": {"kind": "scripted", "actions": actions}}))
    return path


async def _run_until_asked(tmp_path: Path, actions: list[dict], pattern: bytes,
                           *extra: str) -> tuple[trio.Process, str]:
    db = tmp_path / "run.db"
    Path(tmp_path, "run-fs", "notes").mkdir(parents=True)
    run = await trio.lowlevel.open_process(
        [*LIBOS, "--db", str(db), *extra, "run", str(_image(tmp_path, actions)),
         "--goal", "file it", "--caps", json.dumps(ASK), "human:operator:ask"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    shown = run.stderr if "--json" in extra else run.stdout
    assert shown is not None
    return run, (await read_until(shown, pattern)).decode()


async def test_run_says_it_waits_and_the_pasted_command_answers(tmp_path: Path) -> None:
    run, text = await _run_until_asked(tmp_path, [
        {"tool": "write_file", "args": {"path": "/notes/todo.txt", "data": "ship it",
                                        "reason": "keep notes\u202e\x1b]8;;http://x\x07"}}],
        rb"libos --db \S+ deny apr_[0-9a-f]+")
    try:
        notice = text[text.index("process 1 waits for a person"):]
        assert notice.startswith("process 1 waits for a person: fs.write on /notes/todo.txt "
                                 "(reason: keep notes\\u202e\\u001b]8;;http://x\\u0007)")
        assert_inert(text)
        [rid] = set(re.findall(r"apr_[0-9a-f]{24}", notice))
        command = re.search(rf"libos (--db \S+ approve {rid})", notice)
        assert command is not None and f"approvals show {rid}" in notice
        answered = await trio.run_process([*LIBOS, *command.group(1).split()],
                                          capture_stdout=True, env=ENV)
        assert answered.stdout.decode().startswith(f"{rid}: approved (once)")
        assert run.stdout is not None
        rest = (await read_to_end(run.stdout)).decode()
        with trio.fail_after(10):
            await run.wait()
    finally:
        if run.returncode is None:
            run.kill()
    assert run.returncode == 0, rest
    assert "process 1 exited (exit 0)" in rest
    assert (tmp_path / "run-fs" / "notes" / "todo.txt").read_text() == "ship it"


async def test_a_question_names_the_answer_command_and_json_keeps_stdout_clean(
        tmp_path: Path) -> None:
    run, text = await _run_until_asked(tmp_path, [
        {"tool": "ask_human", "args": {"question": "Which day?", "choices": ["mon", "tue"]}}],
        rb"libos --db \S+ answer apr_[0-9a-f]+ --shown [0-9a-f]{64} VALUE", "--json")
    try:
        assert "process 1 waits for a person: it asks Which day?" in text
        [rid] = set(re.findall(r"apr_[0-9a-f]{24}", text))
        done = await trio.run_process([*LIBOS, "--db", str(tmp_path / "run.db"), "answer",
                                       rid[:12], '"tue"'], capture_stdout=True, env=ENV)
        assert done.returncode == 0
        assert run.stdout is not None
        out = await read_to_end(run.stdout)
        with trio.fail_after(10):
            await run.wait()
    finally:
        if run.returncode is None:
            run.kill()
    assert run.returncode == 0
    status = json.loads(out)  # stdout holds the status alone
    assert status["state"] == "exited" and status["exit_code"] == 0
