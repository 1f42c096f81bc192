"""The notice `libos run` (and `libos resume --all`) prints when a process waits for a person
says what an answer grants and binds it (red team, lane rspeople).

1. MEDIUM: a request under a flow bound (`flows: {"secret": "ask"}`) declassifies the data
   approving it lets out, and the notice said only `fs.write on /exports/t`: a person who
   pasted its `libos approve` line let the secret out, never told (the page, `approvals
   show` and the MCP forms say so). And its commands carried no `--shown`: a database writer
   who added a label after the notice had it signed (red team 24's attack, through the one
   line printed to be pasted). Now the notice names the labels, and its commands answer
   only the request as the notice showed it (none printed for a row that gives no digest).
2. LOW: the process id came from the row as stored: a writer's text there (SQLite keeps
   text in an INTEGER column) reached the person's terminal raw, escapes and all."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
from pathlib import Path

import trio
from rich.console import Console

from broker import Kernel
from broker.store import SQLiteStore
from broker.waits import WaitNotices
from tests.broker.kernel.test_approvals import ASK_WRITE, _proc
from tests.broker.kernel.test_signed_answers_redteam21 import _write
from tests.broker.terminal import read_to_end, read_until
from tests.broker.test_cli_approvals import _ask
from tests.broker.test_cli_run_waits import ENV, LIBOS

SECRET = {"kind": "fs", "scope": "/secrets/**", "rights": ["read"], "labels": ["secret"]}
EXPORT = {"kind": "fs", "scope": "/exports/**", "rights": ["write"], "flows": {"secret": "ask"}}


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "leak.json"
    path.write_text(json.dumps({
        "name": "leak", "tools": ["read_file", "write_file"],
        "needs": ["fs:/**:read,write"],
        "planner": {"kind": "scripted", "actions": [
            {"tool": "read_file", "args": {"path": "/secrets/token.txt"}},
            {"tool": "write_file", "args": {"path": "/exports/t", "data": "report"}}]}}))
    return path


def _pasted(notice: str, verb: str) -> list[str]:
    """The notice's `libos ... VERB ...` command, as a person's shell hands it to libos."""
    line = re.search(rf"libos (--db \S+ {verb} apr_[0-9a-f]+[^\n]*?)(?: or |\n|$)", notice)
    assert line is not None, notice
    return shlex.split(line.group(1))


async def test_the_notice_names_what_approving_declassifies_and_binds_it(
        tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    for name in ("secrets", "exports"):
        Path(tmp_path, "run-fs", name).mkdir(parents=True)
    Path(tmp_path, "run-fs", "secrets", "token.txt").write_text("tok-123")
    run = await trio.lowlevel.open_process(
        [*LIBOS, "--db", str(db), "run", str(_image(tmp_path)), "--goal", "report",
         "--caps", json.dumps(SECRET), json.dumps(EXPORT)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**ENV, "COLUMNS": "400"})
    try:
        assert run.stdout is not None
        text = (await read_until(run.stdout, rb"libos --db \S+ deny apr_[^\n]*\n")).decode()
        notice = text[text.index("waits for a person"):]
        assert "data labelled secret" in notice and "declassif" in notice, notice
        approve = _pasted(notice, "approve")
        assert approve[approve.index("--shown") + 1] == re.search(
            r"--shown ([0-9a-f]{64})", notice).group(1)  # type: ignore[union-attr]
        rid = approve[approve.index("approve") + 1]
        # A writer adds a label after the notice: the pasted line signs nothing.
        store = SQLiteStore(db, writer=False)
        labels = store.get_approval(rid)["labels"]
        _write(db, rid, {"labels": json.dumps(["pii", "secret"])})
        refused = subprocess.run([*LIBOS, *approve], capture_output=True, text=True,
                                 env=ENV, timeout=120)
        assert refused.returncode == 2 and "changed since it was shown" in refused.stderr
        row = store.get_approval(rid)
        assert (row["state"], row["sig"]) == ("pending", None)
        # The neighbour: the request as the notice showed it, answered by its line.
        _write(db, rid, {"labels": labels})
        done = subprocess.run([*LIBOS, *approve], capture_output=True, text=True, env=ENV,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        rest = (await read_to_end(run.stdout)).decode()
        with trio.fail_after(30):
            await run.wait()
        store.close()
    finally:
        if run.returncode is None:
            run.kill()
    assert run.returncode == 0, rest
    assert (tmp_path / "run-fs" / "exports" / "t").read_text() == "report"
    async with Kernel.open(db) as kernel:
        refusals = [r["detail"] for r in kernel.audit() if r["syscall"] == "approval.answer"
                    and r["phase"] == "rejected"]
    assert [(r["error"], r["request"]) for r in refusals] == [("CONFLICT", rid)]


async def test_a_writers_pid_reaches_the_terminal_inert_and_no_unbound_command(
        kernel: Kernel, db_path: Path, nursery: trio.Nursery) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    request = await _ask(kernel, nursery, pid, [], path="/out/a.txt", data="x")
    neighbour = await _ask(kernel, nursery, pid, [], path="/out/b.txt", data="y")
    _write(db_path, request["id"], {"pid": f"{pid}\x1b[2J\x1b]52;c;b3duZWQ=\x1b\\"})
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=400)
    for line in WaitNotices(str(db_path)).new(kernel.approvals()):
        console.print(line)
    text = out.getvalue()
    assert "\x1b[2J" not in text and "\x1b]52" not in text  # (rich's own colours aside)
    assert f"process {pid}\\u001b[2J\\u001b]52;c;b3duZWQ=\\u001b\\ waits" in text
    # Its row gives no digest (a column not of its type): no command is printed to answer
    # it, as `approvals show` and the page give none; the neighbour's is bound.
    edited = text[:text.index(f"process {pid} waits")]
    assert f"approve {request['id']}" not in edited and "edited in the database" in edited
    assert f"approve {neighbour['id']} --shown {neighbour['digest']}" in text
