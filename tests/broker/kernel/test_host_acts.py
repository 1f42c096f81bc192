"""The host's own acts are in the chain (issue 12, item 3; ARCHITECTURE invariant 10): spawns
and forks with every capability they grant, revocations, kill, pause and resume, image
registrations, approvals given through the API, exits and the host's objects and files. Each
is a record `libos audit --verify` covers (an edited one is named), a refused one is recorded
with its typed error, and every record stays bounded and is shown inert."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import (
    AgentImage,
    Conflict,
    InvalidArgument,
    Kernel,
    NotCapable,
    NotFound,
)
from broker.cli import main as cli_main
from broker.kernel.host_acts import MAX_LISTED, value_digest
from broker.store.audit import ADMIN_SYSCALLS, HOST_ACTS
from broker.syscalls import TABLE
from tests.broker.kernel.test_approvals import _collect, _pending

ASK_OUT = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}
NEEDS = ("fs:/data/**:read,write", "fs:/out/**:write", "obj:*:read,write", "proc:*:spawn")
# The acts whose records the story leaves, by (phase, syscall).
ACTS = ["host.image", "host.spawn", "host.fork", "approval.answer", "proc.signal",
        "caps.revoke", "host.obj.put", "host.obj.get", "host.fs.write", "host.fs.read",
        "host.exit"]


def cli_verify(db: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = cli_main(["audit", "--verify", "--db", str(db), "--json"])
    return code, json.loads(capsys.readouterr().out)["problems"]


def admin(kernel: Kernel, syscall: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit() if r["syscall"] == syscall and r["phase"] == "admin"]


def wires(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [{k: v for k, v in c.items() if k != "handle"} for c in kernel.capabilities(pid)]


async def story(kernel: Kernel) -> dict[str, Any]:
    """One of each host act, through the embedding API."""
    Path(kernel.fs.root, "out").mkdir()  # type: ignore[attr-defined]
    image = await kernel.register_image(AgentImage(
        "agent", tools=("write_file", "read_file", "spawn"), needs=NEEDS,
        description="files in /data, reports to /out"))
    # A deny rule for a kind the image never declares: it only narrows.
    pid = kernel.spawn("agent", caps=["fs:/data/**:read,write", ASK_OUT, "proc:*:spawn",
                                      {"kind": "net", "scope": "*", "rights": ["fetch"],
                                       "effect": "deny"}])
    fork = kernel.fork(pid, caps=["fs:/data/pub/**:read"])
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(
            pid, "write_file", {"path": "/out/r.txt", "data": "report"}))
        [request] = await _pending(kernel)
        kernel.approve(request["id"])
    assert results == [6]
    kernel.pause(fork)
    kernel.resume(fork)
    kernel.kill(fork, "done with it")
    spawn_cap = next(c["id"] for c in kernel.capabilities(pid) if c["kind"] == "proc")
    kernel.revoke(spawn_cap)
    assert kernel.put_object("plan", {"steps": 3}, ns="shared") == {
        "ns": "shared", "name": "plan", "version": 1}
    assert kernel.get_object("plan", ns="shared")["value"] == {"steps": 3}
    assert kernel.write_file("/data/seed.txt", "seeded", parents=True) == 6
    assert kernel.read_file("/data/seed.txt") == "seeded"
    status = kernel.exit(pid, 3, {"done": True})
    assert status["state"] == "exited" and status["exit_code"] == 3
    return {"image": image, "pid": pid, "fork": fork, "revoked": spawn_cap,
            "request": request["id"]}


async def test_every_host_act_is_in_the_chain_and_an_edit_is_named(
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(db_path) as kernel:
        told = await story(kernel)
        pid, fork = told["pid"], told["fork"]
        [image] = admin(kernel, "host.image")
        stored = kernel.store.get_image("agent")[1]
        assert image["detail"]["spec"] == value_digest(stored)
        assert image["detail"]["needs"] == stored["needs"] and image["resource"] == "agent:1"
        assert image["detail"]["tools"] == ["write_file", "read_file", "spawn"]
        # Every capability granted, exactly, with its id: the deny rule and the namespace too.
        [spawned] = admin(kernel, "host.spawn")
        assert spawned["pid"] == pid and spawned["detail"]["who"] == "host"
        granted = spawned["detail"]["caps"]
        assert {(c["kind"], c["scope"], c["effect"]) for c in granted} == {
            ("fs", "/data/**", "allow"), ("fs", "/out/**", "ask"), ("proc", "*", "allow"),
            ("net", "*", "deny"), ("obj", f"proc/{pid}", "allow")}
        still_held = wires(kernel, pid)
        assert all(c in granted for c in still_held)  # revoked proc:* is gone since
        [forked] = admin(kernel, "host.fork")
        assert forked["pid"] == fork and forked["detail"]["source"] == pid
        assert [c["scope"] for c in forked["detail"]["caps"]] == [
            "/data/pub/**", "*", f"proc/{fork}"]  # the parent's deny rule is inherited
        [answer] = admin(kernel, "approval.answer")
        assert answer["detail"]["request"] == told["request"]
        assert answer["detail"]["who"] == "api" and answer["detail"]["answer"] == "once"
        signals = admin(kernel, "proc.signal")
        assert [(r["pid"], r["detail"]["signal"], r["detail"]["who"]) for r in signals] == [
            (fork, "pause", "host"), (fork, "resume", "host"), (fork, "kill", "host")]
        [revoked] = admin(kernel, "caps.revoke")
        assert revoked["resource"] == told["revoked"]
        assert revoked["detail"] == {"who": "host", "revoked": [told["revoked"]],
                                     "cap_removed": [told["revoked"]]}
        [put] = admin(kernel, "host.obj.put")
        assert put["resource"] == "shared" and put["detail"]["value"] == value_digest(
            {"steps": 3})
        [written] = admin(kernel, "host.fs.write")
        assert written["resource"] == "/data/seed.txt" and written["detail"]["bytes"] == 6
        [ended] = admin(kernel, "host.exit")
        assert ended["pid"] == pid and ended["detail"]["code"] == 3
        assert ended["detail"]["result"] == {"done": True}
        assert kernel.verify_audit()[1] == []
        seqs = {act: admin(kernel, act)[0]["seq"] for act in ACTS}
    assert {r for r in seqs if r.startswith("host.")} == HOST_ACTS
    assert HOST_ACTS <= ADMIN_SYSCALLS and not HOST_ACTS & set(TABLE)
    assert cli_verify(db_path, capsys) == (0, [])
    # Each record, edited behind the broker's back, is named by `libos audit --verify`.
    for act, seq in seqs.items():
        db = sqlite3.connect(db_path)
        try:
            with db:
                [original] = db.execute("SELECT detail FROM audit WHERE seq=?", (seq,)).fetchone()
                detail = json.loads(original)
                detail["who"] = "someone else"
                if "caps" in detail:  # a wider grant than the host gave
                    detail["caps"][0]["scope"] = "/**"
                db.execute("UPDATE audit SET detail=? WHERE seq=?", (json.dumps(detail), seq))
            code, problems = cli_verify(db_path, capsys)
            assert code == 1 and problems[0] == (
                f"record {seq}: content does not match its hash: edited"), act
            # (a record that creates, grants or removes rows, edited, vouches for none: the
            # rows it vouched for are named too)
            assert all("capability" in p for p in problems[1:]), (act, problems)
            with db:
                db.execute("UPDATE audit SET detail=? WHERE seq=?", (original, seq))
        finally:
            db.close()
    assert cli_verify(db_path, capsys) == (0, [])


async def test_a_refused_host_act_is_recorded_with_its_error(kernel: Kernel) -> None:
    await kernel.register_image(AgentImage("agent", tools=("read_file",), needs=NEEDS))
    driven = kernel.spawn("agent", caps=["fs:/data/**:read"])
    os.symlink("/etc", Path(kernel.fs.root, "out"))  # type: ignore[attr-defined]
    refusals: list[tuple[str, type[Exception], Any]] = [
        ("host.spawn", NotFound, lambda: kernel.spawn("nope")),
        ("host.spawn", NotCapable, lambda: kernel.spawn("agent", caps=["fs:/etc/**:read"])),
        ("host.spawn", InvalidArgument, lambda: kernel.spawn("agent", caps=["fs:/x:fly"])),
        ("host.fork", NotFound, lambda: kernel.fork(999)),
        ("caps.revoke", NotFound, lambda: kernel.revoke("cap_" + "0" * 24)),
        ("host.obj.put", InvalidArgument, lambda: kernel.put_object("x", {1, 2}, ns="s")),
        ("host.obj.put", InvalidArgument, lambda: kernel.put_object("x", 1, ns="bad ns!")),
        ("host.obj.get", NotFound, lambda: kernel.get_object("none", ns="s")),
        ("host.fs.write", NotCapable, lambda: kernel.write_file("/out/passwd", "x")),
        ("host.fs.read", NotCapable, lambda: kernel.read_file("/../etc/passwd")),
        ("host.fs.read", NotFound, lambda: kernel.read_file("/data/none.txt")),
        ("host.exit", InvalidArgument, lambda: kernel.exit(driven, "0")),
        ("host.exit", InvalidArgument, lambda: kernel.exit(driven, 2**40)),
        ("host.exit", NotFound, lambda: kernel.exit(999)),
    ]
    for act, error, attempt in refusals:
        with pytest.raises(error):
            attempt()
        last = kernel.audit()[-1]
        assert (last["syscall"], last["phase"]) == (act, "rejected"), act
        assert last["detail"]["error"] == error.code and last["detail"]["who"] == "host"
    with pytest.raises(InvalidArgument):
        await kernel.register_image({"name": "broken", "needs": ["fs"]})
    assert kernel.audit()[-1]["syscall"] == "host.image"
    assert kernel.audit()[-1]["phase"] == "rejected"
    # Nothing was written by a refused act; the legitimate ones still work.
    assert Path("/etc/passwd").read_text() != "x"
    assert kernel.write_file("/data/a.txt", "fine", parents=True) == 4
    assert kernel.exit(driven, 0)["state"] == "exited"
    with pytest.raises(Conflict):  # it has ended
        kernel.exit(driven, 1)
    assert kernel.audit()[-1]["phase"] == "rejected"
    assert kernel.verify_audit()[1] == []


async def test_a_planner_driven_process_is_not_the_hosts_to_exit(kernel: Kernel) -> None:
    from broker import CallTool, ScriptedPlanner

    await kernel.register_image(AgentImage("agent", tools=("sleep",), needs=("clock:*:sleep",)))
    pid = kernel.spawn("agent", caps=["clock:*:sleep"], planner=ScriptedPlanner(
        [CallTool("sleep", {"seconds": 30})]))
    await trio.sleep(0.05)
    with pytest.raises(Conflict, match="planner"):
        kernel.exit(pid, 0)
    assert kernel.audit()[-1]["phase"] == "rejected"
    kernel.kill(pid)


async def test_host_records_stay_bounded_and_are_shown_inert(
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hostile = "\x1b]52;c;cGF3bmVk\x07\u202eevil"
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage(
            hostile, tools=("read_file",), needs=("fs:/**:read",),
            description="x" * (1 << 20)))
        many = [f"fs:/data/d{n}/**:read" for n in range(100)]
        pid = kernel.spawn(hostile, caps=many)
        [spawned] = admin(kernel, "host.spawn")
        detail = spawned["detail"]
        held = wires(kernel, pid)
        assert len(detail["caps"]) == MAX_LISTED and detail["caps"] == held[:MAX_LISTED]
        assert detail["caps_total"] == len(held) == 101
        assert detail["caps_sha256"] == value_digest(held)["sha256"]
        kernel.write_file("/big.bin", os.urandom(1 << 20))
        kernel.put_object("big", "y" * (1 << 20), ns="shared")
        for act in ("host.image", "host.spawn", "host.fs.write", "host.obj.put"):
            [record] = admin(kernel, act)
            # (bounded by what was granted: the spawn's 101 rows each have a digest, and an
            # allow row its id, `capvouch.CAP_ALLOWS`)
            assert len(json.dumps(record["detail"])) < 20_000, act
    assert cli_main(["audit", "--db", str(db_path)]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown and "\u202e" not in shown and "\x07" not in shown
    assert "host.spawn" in shown and "host.image" in shown
