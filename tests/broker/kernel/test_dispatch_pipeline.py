"""The one place where authority is checked: the dispatcher's pipeline, stage by stage.

live caller → table → validate → check → budget → intent → act → outcome. For each stage, a
call that fails there: the typed error, the audit record it leaves, and that no later stage
ran (no intent record when the check fails, no effect when the intent cannot be written).
Every call is an `fs.write` under `fs:/out/**:write`, so "the effect" is a file on disk.

The store refusing a record is real SQLite refusing it: a trigger, added through a second
connection to the same database, aborts the insert of exactly one kind of record.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from broker import (
    ApprovalDenied,
    Budget,
    Conflict,
    InvalidArgument,
    Kernel,
    LimitExceeded,
    NotCapable,
)
from broker.kernel.approvals import AutoPolicy
from broker.kernel.process import AgentProcess
from broker.store import args_hash
from tests.broker.syscalls.test_net import Server, response, server  # noqa: F401 (fixture)
from tests.conftest import open_image
from tests.sandboxes.test_wasm import ECHO

CAPS = ["fs:/out/**:write", "fs:/**:read"]


async def _caller(kernel: Kernel, **image: Any) -> AgentProcess:
    Path(kernel.fs.root, "out").mkdir(exist_ok=True)  # type: ignore[attr-defined]
    await open_image(kernel, needs=("fs:/**:read,write",), tools=("write_file",), **image)
    return kernel.process(kernel.spawn("agent", caps=CAPS))


def _file(kernel: Kernel, name: str) -> Path:
    return Path(kernel.fs.root, "out", name)  # type: ignore[attr-defined]


def _since(kernel: Kernel, pid: int, seq: int) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["seq"] > seq]


def _head(kernel: Kernel) -> int:
    return kernel.store.head_seq


async def _write(kernel: Kernel, proc: AgentProcess, name: str, **extra: Any) -> Any:
    return await kernel.dispatcher.run(proc, None, "fs.write",
                                       {"path": f"/out/{name}", "data": "x", **extra})


@contextmanager
def _store_refuses(db_path: Path, phase: str, syscall: str) -> Iterator[None]:
    """While the block runs, SQLite itself aborts the insert of `phase` records of
    `syscall` (every other record is written as usual)."""
    db = sqlite3.connect(db_path)
    try:
        db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON audit WHEN NEW.phase = '{phase}' "
                   f"AND NEW.syscall = '{syscall}' BEGIN SELECT RAISE(ABORT, 'disk says no'); "
                   "END")
        db.commit()
        yield
    finally:
        db.execute("DROP TRIGGER IF EXISTS refuse")
        db.commit()
        db.close()


async def test_an_allowed_call_leaves_its_intent_before_and_its_outcome_after_the_effect(
        kernel: Kernel) -> None:
    proc = await _caller(kernel)
    before = _head(kernel)
    assert await _write(kernel, proc, "ok.txt") == 1
    intent, outcome = _since(kernel, proc.pid, before)
    assert (intent["phase"], intent["syscall"], intent["resource"]) == (
        "intent", "fs.write", "/out/ok.txt")
    assert intent["args_hash"] == args_hash({"path": "/out/ok.txt", "data": "x"})
    assert intent["cap_id"] is not None  # the capability the check found
    assert outcome["phase"] == "outcome" and outcome["detail"]["ok"] is True
    assert outcome["detail"]["intent"] == intent["seq"] and outcome["detail"]["result"] == 1
    assert _file(kernel, "ok.txt").read_text() == "x"
    assert proc.usage.syscalls == 1


async def test_a_call_from_an_ended_process_leaves_nothing(kernel: Kernel) -> None:
    proc = await _caller(kernel)
    kernel.kill(proc.pid)
    before = _head(kernel)
    with pytest.raises(Conflict, match="has killed"):
        await _write(kernel, proc, "late.txt")
    assert _head(kernel) == before  # not a record, not a count: it never entered the table
    assert not _file(kernel, "late.txt").exists()


async def test_table_an_unknown_syscall_is_denied_by_name_and_goes_no_further(
        kernel: Kernel) -> None:
    proc = await _caller(kernel)
    before = _head(kernel)
    with pytest.raises(NotCapable, match="no such syscall"):
        await kernel.dispatcher.run(proc, None, "fs.wipe\n", {"path": "/out"})
    [denied] = _since(kernel, proc.pid, before)
    assert denied["phase"] == "denied" and denied["syscall"] == "unknown"
    assert denied["detail"]["name"] == "fs.wipe\\n"  # what was asked, kept inert
    assert denied["detail"]["error"] == "NOT_CAPABLE"
    assert proc.usage.syscalls == 1  # an attempt counts, refused or not


async def test_validate_bad_arguments_are_rejected_before_any_check(kernel: Kernel) -> None:
    proc = await _caller(kernel)
    before = _head(kernel)
    # Outside every capability too: the arguments are refused first, so it is not a denial.
    with pytest.raises(InvalidArgument):
        await kernel.dispatcher.run(proc, None, "fs.write", {"path": "/etc/passwd"})
    [rejected] = _since(kernel, proc.pid, before)
    assert (rejected["phase"], rejected["syscall"]) == ("rejected", "fs.write")
    assert rejected["detail"]["error"] == "INVALID_ARGUMENT"
    assert rejected["resource"] is None  # no resource was worked out: the check never ran
    assert not [e for e in kernel.store.events(pid=proc.pid) if e["kind"] == "denied"]


async def test_check_a_denial_leaves_a_denied_record_and_no_intent_no_effect(
        kernel: Kernel) -> None:
    proc = await _caller(kernel)
    before = _head(kernel)
    with pytest.raises(NotCapable):
        await kernel.dispatcher.run(proc, None, "fs.write",
                                    {"path": "/etc/cron.d/x", "data": "* * * * * sh"})
    [denied] = _since(kernel, proc.pid, before)
    assert (denied["phase"], denied["syscall"]) == ("denied", "fs.write")
    assert denied["resource"] == "/etc/cron.d/x" and denied["detail"]["error"] == "NOT_CAPABLE"
    assert [e["data"]["resource"] for e in kernel.store.events(pid=proc.pid)
            if e["kind"] == "denied"] == ["/etc/cron.d/x"]
    assert not Path(kernel.fs.root, "etc").exists()  # type: ignore[attr-defined]
    assert proc.usage.syscalls == 1
    # Its neighbour, inside the capability, still runs.
    assert await _write(kernel, proc, "neighbour.txt") == 1


async def test_check_a_call_only_an_ask_covers_waits_for_a_person_and_a_no_is_a_denial(
        db_path: Path) -> None:
    ask = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}
    async with Kernel.open(db_path, approvers=[AutoPolicy(lambda request: "deny")]) as kernel:
        Path(kernel.fs.root, "out").mkdir()  # type: ignore[attr-defined]
        await open_image(kernel, needs=("fs:/**:read,write",), tools=("write_file",))
        proc = kernel.process(kernel.spawn("agent", caps=[ask]))
        before = _head(kernel)
        with pytest.raises(ApprovalDenied, match="answered 'deny'"):
            await _write(kernel, proc, "asked.txt")
        records = [(r["phase"], r["syscall"]) for r in kernel.audit() if r["seq"] > before]
        assert records == [("ask", "fs.write"), ("admin", "approval.answer"),
                           ("denied", "fs.write")]  # and no intent
        assert not _file(kernel, "asked.txt").exists()


async def test_budget_the_call_past_the_budget_is_rejected_before_its_intent(
        kernel: Kernel) -> None:
    proc = await _caller(kernel, budget=Budget(syscalls=1))
    assert await _write(kernel, proc, "first.txt") == 1
    before = _head(kernel)
    with pytest.raises(LimitExceeded, match="syscalls budget"):
        await _write(kernel, proc, "second.txt")
    rejected = [r for r in _since(kernel, proc.pid, before) if r["syscall"] == "fs.write"]
    assert [(r["phase"], r["detail"]["error"]) for r in rejected] == [
        ("rejected", "LIMIT_EXCEEDED")]  # checked and allowed, then refused: no intent
    assert not _file(kernel, "second.txt").exists()
    assert proc.state.value == "killed"  # whoever owned the spent budget ends


async def test_intent_no_effect_when_the_intent_cannot_be_written(kernel: Kernel,
                                                                   db_path: Path) -> None:
    proc = await _caller(kernel)
    before = _head(kernel)
    with _store_refuses(db_path, "intent", "fs.write"), pytest.raises(
            sqlite3.IntegrityError, match="disk says no"):
        await _write(kernel, proc, "unrecorded.txt")
    assert not _file(kernel, "unrecorded.txt").exists()  # act never ran
    assert _since(kernel, proc.pid, before) == []  # nor did the outcome
    # The chain is whole, and the next call goes through.
    assert await _write(kernel, proc, "after.txt") == 1
    assert kernel.verify_audit()[1] == []


async def test_act_a_failing_effect_is_an_outcome_linked_to_its_intent(kernel: Kernel) -> None:
    proc = await _caller(kernel)
    _file(kernel, "taken.txt").write_text("first")
    before = _head(kernel)
    with pytest.raises(Conflict):
        await _write(kernel, proc, "taken.txt", exclusive=True)
    intent, outcome = _since(kernel, proc.pid, before)
    assert intent["phase"] == "intent" and intent["resource"] == "/out/taken.txt"
    assert outcome["phase"] == "outcome" and outcome["detail"]["ok"] is False
    assert outcome["detail"]["error"] == "CONFLICT"
    assert outcome["detail"]["intent"] == intent["seq"]
    assert _file(kernel, "taken.txt").read_text() == "first"


async def test_outcome_an_unwritten_outcome_is_settled_as_unknown_on_the_next_opening(
        db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        proc = await _caller(kernel)
        before = _head(kernel)
        with _store_refuses(db_path, "outcome", "fs.write"), pytest.raises(
                sqlite3.IntegrityError, match="disk says no"):
            await _write(kernel, proc, "done.txt")
        # The effect happened after its intent was durable; its outcome is what is missing.
        assert _file(kernel, "done.txt").read_text() == "x"
        [intent] = _since(kernel, proc.pid, before)
        assert intent["phase"] == "intent"
    async with Kernel.open(db_path) as kernel:
        [settled] = [r for r in kernel.audit(proc.pid) if r["seq"] > intent["seq"]
                     and r["syscall"] == "fs.write"]
        assert settled["phase"] == "outcome" and settled["detail"]["unknown"] is True
        assert settled["detail"]["intent"] == intent["seq"]
        assert settled["detail"]["error"] == "OUTCOME_UNKNOWN"
        assert kernel.verify_audit()[1] == []


# -- every authority decision is the syscall's own check (issue 14, item 2) ---------------------
#
# Each decision below used to be made inside a handler, after the intent: a refusal was a failed
# outcome. Now each runs in the table's authorize step: a `denied` record, no intent, no effect.

def _denied_only(kernel: Kernel, pid: int, syscall: str, before: int) -> dict[str, Any]:
    records = [r for r in _since(kernel, pid, before) if r["syscall"] == syscall]
    assert [r["phase"] for r in records] == ["denied"], records
    assert records[0]["detail"]["error"] == "NOT_CAPABLE"
    return records[0]


async def _registering(kernel: Kernel) -> AgentProcess:
    await open_image(kernel, needs=("fs:/**:read,write", "tool:*:register,call"),
                     tools=("register_tool",))
    return kernel.process(kernel.spawn("agent", caps=[*CAPS, "tool:*:register,call"]))


@pytest.fixture
async def wasm_kernel(db_path: Path, tmp_path: Path) -> Any:
    from sandboxes.wasm import WasmSandbox

    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")]) as k:
        yield k


async def test_check_a_manifest_wider_than_the_process_is_denied_before_anything_is_stored(
        wasm_kernel: Kernel) -> None:
    kernel = wasm_kernel
    proc = await _registering(kernel)
    sources = kernel.store.tool_source_hashes()
    before = _head(kernel)
    with pytest.raises(NotCapable, match="escalation"):
        await kernel.dispatcher.run(proc, None, "tool.register", {
            "name": "wide", "lang": "wat", "source": ECHO, "manifest": ["fs:/**:write"]})
    record = _denied_only(kernel, proc.pid, "tool.register", before)
    assert "fs:/**:write" in record["detail"]["message"]
    assert "wide" not in proc.tools and kernel.store.tool_source_hashes() == sources
    # A manifest that narrows is registered.
    out = await kernel.dispatcher.run(proc, None, "tool.register", {
        "name": "narrow", "lang": "wat", "source": ECHO, "manifest": ["fs:/out/**:write"]})
    assert out["name"] == "narrow" and "narrow" in proc.tools


async def test_check_a_tool_cannot_register_one_wider_than_its_own_manifest(
        wasm_kernel: Kernel) -> None:
    from broker.caps import CapSpec
    from broker.kernel.invocation import Invocation
    from sandboxes.base import CallLimits

    kernel = wasm_kernel
    proc = await _registering(kernel)
    own = (CapSpec.parse("tool:*:register"), CapSpec.parse("fs:/out/a/**:write"))
    inv = Invocation.start(_head(kernel), proc.pid, "registrar", own, None, CallLimits())
    before = _head(kernel)
    with pytest.raises(NotCapable, match="calling tool"):
        await kernel.dispatcher.run(proc, inv, "tool.register", {
            "name": "wider", "lang": "wat", "source": ECHO,
            "manifest": ["fs:/out/**:write"]})
    _denied_only(kernel, proc.pid, "tool.register", before)
    assert "wider" not in proc.tools
    await kernel.dispatcher.run(proc, inv, "tool.register", {
        "name": "inside", "lang": "wat", "source": ECHO,
        "manifest": ["fs:/out/a/b/**:write"]})
    assert "inside" in proc.tools


async def test_check_a_shell_cwd_outside_the_root_is_denied_and_nothing_runs(
        kernel: Kernel) -> None:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "box").mkdir()
    os.symlink("..", root / "box" / "up")  # inside the fs root, outside the process's
    await open_image(kernel, needs=("shell:*:run",))
    proc = kernel.process(kernel.spawn("agent", caps=["shell:touch *:run"], root="/box"))
    before = _head(kernel)
    with pytest.raises(NotCapable, match="outside the process root"):
        await kernel.dispatcher.run(proc, None, "shell.run",
                                    {"argv": ["touch", "pwned"], "cwd": "/up"})
    record = _denied_only(kernel, proc.pid, "shell.run", before)
    assert record["resource"] == "touch pwned"
    assert not list(root.rglob("pwned"))
    out = await kernel.dispatcher.run(proc, None, "shell.run", {"argv": ["touch", "ok"]})
    assert out["exit_code"] == 0 and (root / "box" / "ok").exists()


async def test_check_each_redirect_hop_is_a_call_that_spends_a_use(
        kernel: Kernel, server: Server) -> None:  # noqa: F811 (the loopback server fixture)
    base = server.base
    server.routes["/v1/go"] = lambda r: response(302, b"", [("Location", "/v1/there")])
    server.routes["/v1/there"] = lambda r: response(body=b"arrived")
    server.routes["/v1/leak"] = lambda r: response(302, b"", [("Location", "/admin/keys")])
    server.routes["/admin/keys"] = lambda r: response(body=b"KEYS")
    await open_image(kernel, needs=("net:*:fetch",))
    counted = {"kind": "net", "scope": f"GET {base}/v1/*", "rights": ["fetch"], "uses": 3}
    proc = kernel.process(kernel.spawn("agent", caps=[counted]))
    before = _head(kernel)
    out = await kernel.dispatcher.run(proc, None, "net.fetch", {"url": f"{base}/v1/go"})
    assert out["body"] == "arrived" and out["redirects"] == [f"{base}/v1/there"]
    records = [r for r in _since(kernel, proc.pid, before) if r["syscall"] == "net.fetch"]
    assert [(r["phase"], r["resource"]) for r in records] == [
        ("intent", f"GET {base}/v1/go"), ("outcome", f"GET {base}/v1/go"),
        ("intent", f"GET {base}/v1/there"), ("outcome", f"GET {base}/v1/there")]
    assert records[2]["detail"]["follows"] == records[0]["seq"]
    assert records[1]["detail"]["result"]["status"] == 302
    assert [c["uses"] for c in kernel.capabilities(proc.pid) if c["kind"] == "net"] == [1]
    assert proc.usage.syscalls == 2  # the hop counts against the budget like any call
    # A hop no capability allows: denied before it is sent, after the first request's outcome.
    before = _head(kernel)
    with pytest.raises(NotCapable):
        await kernel.dispatcher.run(proc, None, "net.fetch", {"url": f"{base}/v1/leak"})
    records = [r for r in _since(kernel, proc.pid, before) if r["syscall"] == "net.fetch"]
    assert [(r["phase"], r["resource"]) for r in records] == [
        ("intent", f"GET {base}/v1/leak"), ("outcome", f"GET {base}/v1/leak"),
        ("denied", f"GET {base}/admin/keys")]
    assert records[2]["detail"]["follows"] == records[0]["seq"]
    assert not any(r["target"] == "/admin/keys" for r in server.requests)
    # The counted capability is used up (three requests): the next call is refused up front.
    before = _head(kernel)
    with pytest.raises(NotCapable):
        await kernel.dispatcher.run(proc, None, "net.fetch", {"url": f"{base}/v1/there"})
    _denied_only(kernel, proc.pid, "net.fetch", before)



async def test_check_a_redirect_hop_only_an_ask_covers_is_put_to_a_person(
        db_path: Path, server: Server) -> None:  # noqa: F811 (the loopback server fixture)
    base = server.base
    server.routes["/v1/go"] = lambda r: response(302, b"", [("Location", "/ask/there")])
    server.routes["/ask/there"] = lambda r: response(body=b"asked")
    asked: list[str] = []

    def once(request: dict[str, Any]) -> str:
        asked.append(request["resource"])
        return "once"

    async with Kernel.open(db_path, approvers=[AutoPolicy(once)]) as kernel:
        await open_image(kernel, needs=("net:*:fetch",))
        proc = kernel.process(kernel.spawn("agent", caps=[
            {"kind": "net", "scope": f"GET {base}/v1/*", "rights": ["fetch"]},
            {"kind": "net", "scope": f"GET {base}/ask/*", "rights": ["fetch"], "effect": "ask"}]))
        before = _head(kernel)
        out = await kernel.dispatcher.run(proc, None, "net.fetch", {"url": f"{base}/v1/go"})
        assert out["body"] == "asked" and asked == [f"GET {base}/ask/there"]
        records = [r for r in _since(kernel, proc.pid, before) if r["syscall"] == "net.fetch"]
        assert [(r["phase"], r["resource"]) for r in records] == [
            ("intent", f"GET {base}/v1/go"), ("outcome", f"GET {base}/v1/go"),
            ("ask", f"GET {base}/ask/there"), ("intent", f"GET {base}/ask/there"),
            ("outcome", f"GET {base}/ask/there")]
        assert records[3]["detail"]["follows"] == records[0]["seq"]

async def test_check_a_child_grant_an_inherited_deny_rule_covers_is_refused_at_spawn(
        kernel: Kernel) -> None:
    deny = {"kind": "fs", "scope": "/secret/**", "rights": ["read"], "effect": "deny"}
    await open_image(kernel, needs=("fs:/**:read,write", "proc:*:spawn"))
    parent = kernel.process(kernel.spawn("agent", caps=["fs:/**:read", deny, "proc:*:spawn"]))
    processes = len(kernel.store.list_processes())
    before = _head(kernel)
    with pytest.raises(NotCapable, match="deny rule fs:/secret/\\*\\*:read") as caught:
        await kernel.dispatcher.run(parent, None, "proc.spawn", {
            "image": "agent", "caps": ["fs:/secret/keys/**:read"]})
    assert "could never be used" in caught.value.message
    record = _denied_only(kernel, parent.pid, "proc.spawn", before)
    assert record["detail"]["message"] == caught.value.message
    assert len(kernel.store.list_processes()) == processes  # no child
    # A grant the rule only partly covers is a real grant: the child reads outside /secret.
    child = await kernel.dispatcher.run(parent, None, "proc.spawn", {
        "image": "agent", "caps": ["fs:/**:read"]})
    assert [c["scope"] for c in kernel.capabilities(child) if c["effect"] == "deny"] == [
        "/secret/**"]
    # A fork is refused the same way, and by default leaves such a grant behind.
    with pytest.raises(NotCapable, match="could never be used"):
        kernel.fork(parent.pid, caps=["fs:/secret/**:read"])
    # By default a fork takes the source's grants less those a rule covers, and still works.
    holder = kernel.spawn("agent", caps=["fs:/**:read", "fs:/secret/a.txt:read", deny])
    forked = kernel.fork(holder)
    assert sorted((c["scope"], c["effect"]) for c in kernel.capabilities(forked)
                  if c["kind"] == "fs") == [("/**", "allow"), ("/secret/**", "deny")]
