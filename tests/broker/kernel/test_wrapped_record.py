"""A builtin that is exactly one read (`ToolPlan.wraps`: `read_file`, `now`, ...) called with
nothing in it needing a record first writes ONE record: its `tool.call`, whole, with the read
folded in (`audit.WRAPS`: the read's syscall, resource, capability and argument hash, and its
labels), not a record of the read beside it. Whatever reads the chain still says what the read's
own record said: the listing, verification, replay, recovery after a SIGKILL. A read that keeps
its intent first (put to a person, spending a one-shot use) is recorded as it always was.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from broker import ApprovalDenied, Kernel, NotCapable, NotFound
from broker.cli import main as cli
from broker.kernel.approvals import AutoPolicy
from broker.kernel.process import AgentProcess
from broker.render import audit_table
from broker.store import args_hash
from broker.store.opening import open_store
from broker.store.vouch import Tampered
from tests.broker.kernel.test_read_commit import _statements
from tests.conftest import bare_env, open_image
from tests.kill_points import KILL_AT_STEP

ROOT = Path(__file__).resolve().parents[3]
READ = {"kind": "fs", "scope": "/data/**", "rights": ["read"]}
SECRET = {"kind": "fs", "scope": "/secrets/**", "rights": ["read"], "labels": ["secret"]}
NOTE = {"path": "/data/note.txt"}


async def _reader(kernel: Kernel, *caps: Any) -> AgentProcess:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    for folder, text in (("data", "hello"), ("secrets", "s3cret")):
        (root / folder).mkdir(exist_ok=True)
        (root / folder / "note.txt").write_text(text)
    await open_image(kernel, needs=("fs:/**:read", "clock:*:read"), tools=("read_file", "now"))
    return kernel.process(kernel.spawn("agent", caps=list(caps or (READ, "clock:*:read"))))


def _since(kernel: Kernel, pid: int, seq: int) -> list[dict[str, Any]]:
    """The records in the chain (not the listing: `Kernel.audit`)."""
    return [r.to_json() for r in kernel.store.audit_records(pid=pid, after=seq)]


def _listing(records: list[dict[str, Any]]) -> str:
    console = Console(width=240, record=True)
    console.print(audit_table(records))
    return console.export_text()


async def test_a_wrapped_read_is_one_record_that_names_the_read(kernel: Kernel) -> None:
    proc = await _reader(kernel)
    assert await kernel.call_tool(proc.pid, "read_file", NOTE) == "hello"  # (labels looked up)
    before = kernel.store.head_seq
    seen = _statements(kernel)
    assert await kernel.call_tool(proc.pid, "read_file", NOTE) == "hello"
    assert seen == ["INSERT 1"]  # one record, one commit
    [call] = _since(kernel, proc.pid, before)
    assert (call["phase"], call["syscall"], call["resource"], call["inv"], call["tool"]) == (
        "intent+outcome", "tool.call", "read_file", None, None)
    assert call["detail"]["args"] == {"name": "read_file", "args": NOTE}
    assert call["detail"]["ok"] is True and call["detail"]["result"] == "hello"
    folded = call["detail"]["wraps"]
    assert folded == {"syscall": "fs.read", "resource": "/data/note.txt",
                      "cap_id": folded["cap_id"], "args_hash": args_hash(NOTE)}
    assert folded["cap_id"].startswith("cap_")  # the capability the check found
    assert kernel.verify_audit()[1] == []
    # People are shown the read as before, on a line of its own under the call: by the
    # embedding API's listing and by `libos audit`.
    listed, shown_read = [r for r in kernel.audit(proc.pid) if r["seq"] == call["seq"]]
    assert listed == call and "folded" not in listed
    assert shown_read == {**call, "inv": call["seq"], "tool": "read_file", "syscall": "fs.read",
                          "resource": "/data/note.txt", "args_hash": args_hash(NOTE),
                          "cap_id": folded["cap_id"], "folded": True,
                          "detail": {"args": NOTE, "ok": True, "result": "hello",
                                     "result_hash": call["detail"]["result_hash"]}}
    listing = _listing([listed, shown_read])
    assert "tool.call" in listing and "fs.read" in listing and "/data/note.txt" in listing
    # The clock, another wrapper, too.
    before = kernel.store.head_seq
    await kernel.call_tool(proc.pid, "now", {})
    [now] = _since(kernel, proc.pid, before)
    assert now["detail"]["wraps"]["syscall"] == "clock.now"


async def test_a_failed_wrapped_read_is_folded_too_and_replays(kernel: Kernel) -> None:
    proc = await _reader(kernel)
    before = kernel.store.head_seq
    with pytest.raises(NotFound):
        await kernel.call_tool(proc.pid, "read_file", {"path": "/data/missing.txt"})
    [call] = _since(kernel, proc.pid, before)
    assert call["detail"]["ok"] is False and call["detail"]["error"] == "NOT_FOUND"
    assert call["detail"]["wraps"]["resource"] == "/data/missing.txt"
    replayed = await kernel.replay(call["seq"])
    assert replayed["same"] and replayed["syscalls"] == 1 and replayed["unused"] == 0
    assert replayed["recorded"]["code"] == "NOT_FOUND"


async def test_replay_feeds_the_folded_read_its_recorded_result(kernel: Kernel) -> None:
    proc = await _reader(kernel)
    before = kernel.store.head_seq
    await kernel.call_tool(proc.pid, "read_file", NOTE)
    Path(kernel.fs.root, "data", "note.txt").write_text("changed since")  # type: ignore[attr-defined]
    [call] = _since(kernel, proc.pid, before)
    replayed = await kernel.replay(call["seq"])
    assert replayed["same"] and replayed["syscalls"] == 1 and replayed["unused"] == 0
    assert replayed["replayed"] == {"ok": True, "value": "hello"}  # the world not read again


async def test_an_edited_fold_is_caught_by_verify_and_refused_by_replay(db_path: Path) -> None:
    """The attack: a writer of the database makes the record say another file was read (or
    another capability covered it). The fold is in the record's hashed detail."""
    async with Kernel.open(db_path) as kernel:
        proc = await _reader(kernel)
        before = kernel.store.head_seq
        await kernel.call_tool(proc.pid, "read_file", NOTE)
        [call] = _since(kernel, proc.pid, before)
        detail = dict(call["detail"], wraps={**call["detail"]["wraps"],
                                             "resource": "/data/other.txt"})
        db = sqlite3.connect(db_path)
        db.execute("UPDATE audit SET detail=? WHERE seq=?",
                   (json.dumps(detail, sort_keys=True, separators=(",", ":")), call["seq"]))
        db.commit()
        db.close()
    async with Kernel.open(db_path) as kernel:
        problems = kernel.verify_audit()[1]
        assert any(f"record {call['seq']}" in p and "edited" in p for p in problems), problems
        with pytest.raises(Tampered):
            await kernel.replay(call["seq"])


async def test_libos_audit_lists_the_folded_read_on_its_own_line(
        db_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # (a cell is folded, never cut, in a narrow one)
    async with Kernel.open(db_path) as kernel:
        proc = await _reader(kernel)
        await kernel.call_tool(proc.pid, "read_file", NOTE)
    capsys.readouterr()
    assert cli(["audit", "--db", str(db_path), "--json", "--pid", str(proc.pid)]) == 0
    listed = json.loads(capsys.readouterr().out)
    call, read = listed[-2:]
    assert (call["syscall"], read["syscall"], read["resource"], read["folded"]) == (
        "tool.call", "fs.read", "/data/note.txt", True)
    assert read["seq"] == call["seq"] == read["inv"] and read["detail"]["result"] == "hello"
    assert cli(["audit", "--db", str(db_path), "--pid", str(proc.pid)]) == 0
    table = capsys.readouterr().out
    assert "fs.read" in table and "/data/note.txt" in table
    # `--limit N` is the last N records: the call comes with the read folded in it.
    assert cli(["audit", "--db", str(db_path), "--json", "--limit", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == [call, read]
    assert cli(["audit", "--db", str(db_path), "--limit", "-1"]) == 2  # not "all but one"
    assert "not a count" in capsys.readouterr().err


async def test_a_labelled_read_keeps_its_labels_in_the_fold(kernel: Kernel) -> None:
    proc = await _reader(kernel, READ, SECRET)
    before = kernel.store.head_seq
    assert await kernel.call_tool(proc.pid, "read_file", {"path": "/secrets/note.txt"}) == "s3cret"
    [call] = _since(kernel, proc.pid, before)
    assert call["detail"]["wraps"]["labels"] == ["secret"]
    assert "secret" in kernel.process(proc.pid).label  # the caller took the label on


async def test_a_read_put_to_a_person_keeps_its_intent_first(db_path: Path) -> None:
    """An `ask` capability on the wrapped read: the call's intent, the request, the answer
    and the read's intent (naming the approval) are chained before the read; nothing folds."""
    ask = {**READ, "effect": "ask"}
    answers = iter(["once", "deny"])
    async with Kernel.open(db_path, approvers=[AutoPolicy(lambda r: next(answers))]) as kernel:
        proc = await _reader(kernel, ask, "clock:*:read")
        before = kernel.store.head_seq
        assert await kernel.call_tool(proc.pid, "read_file", NOTE) == "hello"
        records = _since(kernel, proc.pid, before)
        assert all("wraps" not in r["detail"] for r in records)
        call = records[0]
        assert (call["phase"], call["syscall"]) == ("intent", "tool.call")
        [read] = [r for r in records if (r["syscall"], r["phase"]) == ("fs.read", "intent")]
        assert read["inv"] == call["seq"]
        assert read["detail"]["approval"]
        [read_end] = [r for r in records if r["syscall"] == "fs.read" and r["phase"] == "outcome"]
        assert read_end["detail"]["intent"] == read["seq"]
        # The person's "no" is a denial with its records, and the process goes on.
        with pytest.raises(ApprovalDenied):
            await kernel.call_tool(proc.pid, "read_file", NOTE)
        assert await kernel.call_tool(proc.pid, "now", {}) > 0
        assert kernel.verify_audit()[1] == []


async def test_a_one_shot_read_is_spent_with_its_intent_never_folded(kernel: Kernel) -> None:
    proc = await _reader(kernel, {**READ, "uses": 1})
    before = kernel.store.head_seq
    assert await kernel.call_tool(proc.pid, "read_file", NOTE) == "hello"
    records = _since(kernel, proc.pid, before)
    assert [(r["phase"], r["syscall"]) for r in records][:2] == [
        ("intent", "tool.call"), ("intent", "fs.read")]
    assert all("wraps" not in r["detail"] for r in records)
    with pytest.raises(NotCapable):  # spent: once
        await kernel.call_tool(proc.pid, "read_file", NOTE)
    assert [r for r in kernel.audit(proc.pid) if r["phase"] == "denied"]


_CHILD = """
import os, signal, sys
import trio
from broker import AgentImage, Kernel

path, kill_at = sys.argv[1], int(sys.argv[2])
""" + KILL_AT_STEP + """
SCRIPT = {"kind": "scripted", "actions": [
    {"tool": "read_file", "args": {"path": "/data/note.txt"}}, {"exit": 0, "result": "read"}]}

async def main():
    async with Kernel.open(path) as kernel:
        if not kernel.ps():
            os.makedirs(os.path.join(kernel.fs.root, "data"), exist_ok=True)
            with open(os.path.join(kernel.fs.root, "data", "note.txt"), "w") as f:
                f.write("hello")
            await kernel.register_image(AgentImage("reader", tools=("read_file",),
                                                   needs=("fs:/data/**:read",),
                                                   planner=SCRIPT))
            pid = kernel.spawn("reader", caps=["fs:/data/**:read"])
        pid = kernel.ps()[0]["pid"]
        kernel.store._db.set_progress_handler(step, 1)  # (kill_at 0: counts, never kills)
        status = await kernel.wait(pid, timeout=30)
        kernel.store._db.set_progress_handler(None, 1)
        print(status["state"], steps, flush=True)

trio.run(main)
"""


def _life(path: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CHILD, str(path), str(kill_at)],
                          env=bare_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT))


def _reads(path: Path) -> list[dict[str, Any]]:
    store = open_store(path)
    try:
        return [json.loads(s.detail_json) for s in store.audit_records()
                if s.record.syscall in ("tool.call", "fs.read")]
    finally:
        store.close()


def test_a_sigkill_anywhere_in_a_wrapped_read_step_leaves_one_folded_record(
        tmp_path: Path) -> None:
    """A scripted agent's step reads through `read_file`; the broker is SIGKILLed at points
    spread over its run. The next broker finishes it, and the chain holds exactly one record of
    the read, folded, ending as the first run's did: a read cut off before its record was
    durable showed nobody anything and is run again; one recorded is never run again."""
    whole = _life(tmp_path / "whole.db", 0)
    assert whole.returncode == 0, whole.stderr
    steps = int(whole.stdout.split()[-1])
    assert steps > 20 and _reads(tmp_path / "whole.db")[0]["wraps"]["syscall"] == "fs.read"
    landed = 0
    for i, kill_at in enumerate(sorted({1, *range(2, steps, max(1, steps // 10)), steps})):
        path = tmp_path / f"kill{i}.db"
        run = _life(path, kill_at)
        landed += run.returncode == -9
        assert run.returncode in (0, -9), run.stderr
        again = _life(path, 0)
        assert again.returncode == 0 and again.stdout.split()[0] == "exited", again.stderr
        [call] = _reads(path)  # one record: no read record beside it, none twice
        assert call["ok"] is True and call["result"] == "hello"
        assert call["wraps"]["resource"] == "/data/note.txt"
        store = open_store(path)
        try:
            problems = store.audit_problems(public_key=store.signer)[1]
            assert all("before a crash" in p for p in problems) and len(problems) <= 1, problems
        finally:
            store.close()
    assert landed >= 3
