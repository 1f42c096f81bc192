"""The approval queue: ask, answer (once, always, deny, deny always), deadlines, bad answers,
one-shot grants under concurrency and restarts, and the CLI answering from another process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import (
    ApprovalDenied,
    CallTool,
    Conflict,
    InvalidArgument,
    Kernel,
    NotCapable,
    NotFound,
    ScriptedPlanner,
)
from broker.cli import main as cli
from broker.kernel.approvals import AutoPolicy
from broker.store import args_hash
from sandboxes.base import WouldBlock
from tests.conftest import open_image

ASK_WRITE = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}
NEEDS = ("fs:/**:read,write", "obj:*:read,write", "clock:*:read,sleep", "human:*:ask")


async def _proc(kernel: Kernel, *caps: Any) -> int:
    Path(kernel.fs.root, "out").mkdir(exist_ok=True)  # type: ignore[attr-defined]
    await open_image(kernel, needs=NEEDS)
    return kernel.spawn("agent", caps=["fs:/**:read", *caps])


async def _pending(kernel: Kernel, count: int = 1) -> list[dict[str, Any]]:
    with trio.fail_after(5):
        while len(kernel.approvals()) < count:
            await trio.sleep(0.01)
    return kernel.approvals()


def _write(path: str = "/out/a.txt", data: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"path": path, "data": data, **extra}


async def _asked_then_closed(db_path: Path, args: dict[str, Any]) -> tuple[int, str]:
    """A process asks (its planner runs in the broker) and the broker closes while the call
    waits: the request stays pending, for the call to resume on after a restart."""
    async with Kernel.open(db_path) as kernel:
        Path(kernel.fs.root, "out").mkdir(exist_ok=True)  # type: ignore[attr-defined]
        await open_image(kernel, needs=NEEDS)
        pid = kernel.spawn("agent", caps=["fs:/**:read", ASK_WRITE],
                           planner=ScriptedPlanner([CallTool("write_file", args)]))
        [request] = await _pending(kernel)
    return pid, request["id"]


async def test_approve_once_runs_exactly_the_asked_call_and_links_the_audit(
        kernel: Kernel) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    args = _write(reason="save the report")
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(results, kernel.call_tool(pid, "write_file", args)))
        [request] = await _pending(kernel)
        assert request["pid"] == pid and request["tool"] == "write_file"
        assert request["syscall"] == "fs.write" and request["resource"] == "/out/a.txt"
        assert request["right"] == "fs:write" and request["reason"] == "save the report"
        assert request["args"] == args and request["args_hash"] == args_hash(args)
        assert request["id"].startswith("apr_") and len(request["id"]) == 28
        answered = kernel.approve(request["id"])
        assert answered["state"] == "approved" and answered["answer"] == "once"
    assert results == [5]
    assert (kernel.fs.root and Path(kernel.fs.root, "out/a.txt").read_text()) == "hello"
    audit = kernel.audit(pid)
    rid = request["id"]
    ask = [r for r in audit if r["phase"] == "ask"]
    answer = [r for r in kernel.audit() if r["syscall"] == "approval.answer"]
    intent = [r for r in audit if r["phase"] == "intent" and r["syscall"] == "fs.write"]
    assert ask[0]["detail"]["request"] == rid and ask[0]["detail"]["reason"] == "save the report"
    assert answer[0]["detail"]["request"] == rid and answer[0]["detail"]["answer"] == "once"
    grant = answer[0]["detail"]["grant"]
    assert intent[0]["detail"]["approval"] == rid and intent[0]["cap_id"] == grant
    assert intent[0]["args_hash"] == ask[0]["args_hash"] == args_hash(args)
    # The one-shot grant is spent: nothing of it is left, in memory or in the store.
    assert all(c["id"] != grant for c in kernel.capabilities(pid))
    assert all(c.id != grant for _, c in kernel.store.load_capabilities())
    # The same call again asks again.
    with pytest.raises(WouldBlock):
        kernel.dispatcher.run_now(kernel.process(pid), None, "fs.write", args)
    assert kernel.verify_audit()[1] == []


async def _collect(results: list[Any], call: Any) -> None:
    try:
        results.append(await call)
    except Exception as exc:
        results.append(exc)


async def test_a_waiting_process_is_in_state_waiting_and_resumes_the_same_call(
        kernel: Kernel) -> None:
    Path(kernel.fs.root, "out").mkdir()  # type: ignore[attr-defined]
    await open_image(kernel, needs=NEEDS)
    pid = kernel.spawn("agent", caps=[ASK_WRITE], planner=ScriptedPlanner([
        CallTool("write_file", _write()),
        CallTool("write_file", _write(data="more", append=True))]))
    [request] = await _pending(kernel)
    proc = kernel.process(pid)
    assert proc.state.value == "waiting" and proc.reason == f"approval {request['id']}"
    kernel.approve(request["id"], always=True)
    status = await kernel.wait(pid, timeout=5)
    assert status["state"] == "exited"
    assert [o.ok for o in proc.history] == [True, True]  # `always` covered the second call
    standing = [c for c in kernel.capabilities(pid) if c["effect"] == "allow"
                and c["scope"] == "/out/a.txt"]
    assert standing and "uses" not in standing[0]


async def test_always_with_a_scope_no_wider_than_the_asking_capability(kernel: Kernel) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(kernel.call_tool, pid, "write_file", _write())
        [request] = await _pending(kernel)
        before = len(kernel.audit())
        for scope, error in (("/**", NotCapable), ("/out2/**", InvalidArgument),
                             ("/elsewhere/x", InvalidArgument)):
            with pytest.raises(error):
                kernel.approve(request["id"], always=True, scope=scope)
        with pytest.raises(InvalidArgument):
            kernel.approve(request["id"], scope="/out/**")  # once is bound to the exact call
        rejected = [r for r in kernel.audit()[before:] if r["phase"] == "rejected"]
        assert len(rejected) == 4 and all(r["detail"]["request"] == request["id"]
                                          for r in rejected)
        assert kernel.approvals()[0]["state"] == "pending"  # refusals changed nothing
        kernel.approve(request["id"], always=True, scope="/out/**")
    await kernel.call_tool(pid, "make_dir", {"path": "/out/c"})  # covered by `always`
    assert await kernel.call_tool(pid, "write_file", _write("/out/c/d.txt")) == 5
    assert kernel.approvals() == []


async def test_deny_once_and_deny_always(kernel: Kernel) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(pid, "write_file", _write()))
        [request] = await _pending(kernel)
        kernel.deny(request["id"])
    assert isinstance(results[0], ApprovalDenied)
    assert not Path(kernel.fs.root, "out/a.txt").exists()
    denied = [r for r in kernel.audit(pid) if r["phase"] == "denied"]
    assert denied[-1]["detail"]["request"] == request["id"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(pid, "write_file", _write()))
        [request] = await _pending(kernel)
        kernel.deny(request["id"], always=True)
    assert isinstance(results[1], ApprovalDenied)
    # Now a rule: refused at once, no new request.
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "write_file", _write())
    assert kernel.approvals() == []
    # A different file under the asking capability still asks.
    with pytest.raises(WouldBlock):
        kernel.dispatcher.run_now(kernel.process(pid), None, "fs.write", _write("/out/z"))


async def test_no_answer_by_the_deadline_is_a_denial(db_path: Path) -> None:
    async with Kernel.open(db_path, approval_timeout=0.3) as kernel:
        pid = await _proc(kernel, ASK_WRITE)
        with trio.fail_after(5), pytest.raises(ApprovalDenied):
            await kernel.call_tool(pid, "write_file", _write())
        [row] = kernel.approvals(state=None)
        assert row["state"] == "expired"
        with pytest.raises(Conflict):
            kernel.approve(row["id"])
        expired = [r for r in kernel.audit(pid) if r["detail"].get("state") == "expired"]
        assert expired and expired[0]["phase"] == "denied"


async def test_bad_answers_are_typed_and_audited(kernel: Kernel) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    for bad in ("apr_" + "0" * 24, "", "x" * 10_000, 42):
        before = len(kernel.audit())
        with pytest.raises(NotFound):
            kernel.approve(bad)  # type: ignore[arg-type]
        [record] = kernel.audit()[before:]
        assert record["phase"] == "rejected" and record["detail"]["error"] == "NOT_FOUND"
        assert len(record["detail"]["request"]) <= 64
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, [], kernel.call_tool(pid, "write_file", _write()))
        [request] = await _pending(kernel)
        with pytest.raises(InvalidArgument):
            kernel.answer(request["id"], "yes")  # not a question
        kernel.approve(request["id"])
    for again in (kernel.approve, kernel.deny):
        with pytest.raises(Conflict):
            again(request["id"])
    assert kernel.audit()[-1]["detail"]["error"] == "CONFLICT"


async def test_changed_arguments_are_not_covered_by_a_one_shot(db_path: Path) -> None:
    """Approved arguments are the executed arguments: the grant is bound to their hash."""
    args = _write(data="approved")
    pid, _ = await _asked_then_closed(db_path, args)  # the broker goes away while it waits
    async with Kernel.open(db_path) as kernel:
        [request] = kernel.approvals()  # still pending after a restart
        kernel.approve(request["id"])  # nobody waits in this broker: granted at once
        proc = kernel.process(pid)
        grant = [c for c in kernel.capabilities(pid) if c.get("args_hash")]
        assert grant and grant[0]["uses"] == 1 and grant[0]["args_hash"] == args_hash(args)
        for changed in (_write(data="changed"), _write("/out/b.txt", "approved"),
                        {**args, "append": True}):
            with pytest.raises(WouldBlock):  # not covered: it would need a new approval
                kernel.dispatcher.run_now(proc, None, "fs.write", changed)
    async with Kernel.open(db_path) as kernel:  # the unused grant survives a restart ...
        proc = kernel.process(pid)
        assert kernel.dispatcher.run_now(proc, None, "fs.write", args) == 8
        with pytest.raises(WouldBlock):  # ... and is used once
            kernel.dispatcher.run_now(proc, None, "fs.write", args)
    async with Kernel.open(db_path) as kernel:  # ... and stays used after another
        with pytest.raises(WouldBlock):
            kernel.dispatcher.run_now(kernel.process(pid), None, "fs.write", args)


ONE_SHOT = {"kind": "fs", "scope": "/once.txt", "rights": ["write"], "uses": 1}


async def test_a_one_shot_under_100_concurrent_attempts(kernel: Kernel) -> None:
    pid = await _proc(kernel, ONE_SHOT)
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(_collect, results,
                               kernel.call_tool(pid, "write_file", {"path": "/once.txt",
                                                                    "data": "x"}))
    assert sum(1 for r in results if r == 1) == 1
    assert sum(1 for r in results if isinstance(r, NotCapable)) == 99
    intents = [r for r in kernel.audit(pid) if r["phase"] == "intent"
               and r["syscall"] == "fs.write"]
    assert len(intents) == 1


async def test_a_one_shot_under_concurrent_threads(kernel: Kernel) -> None:
    """Wasm tools answer cheap syscalls from worker threads: still exactly one use."""
    pid = await _proc(kernel, ONE_SHOT)
    proc = kernel.process(pid)
    results: list[Any] = []

    def attempt() -> None:
        try:
            results.append(kernel.dispatcher.run_now(proc, None, "fs.write",
                                                     {"path": "/once.txt", "data": "x"}))
        except Exception as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(32):
            nursery.start_soon(trio.to_thread.run_sync, attempt)
    assert results.count(1) == 1
    assert sum(1 for r in results if isinstance(r, NotCapable)) == 31


async def test_a_one_shot_is_gone_after_a_failed_use_and_a_restart(db_path: Path) -> None:
    spec = {**ONE_SHOT, "scope": "/missing/dir/f.txt"}
    args = {"path": "/missing/dir/f.txt", "data": "x"}
    async with Kernel.open(db_path) as kernel:
        pid = await _proc(kernel, spec)
        with pytest.raises(NotFound):  # the effect failed ...
            await kernel.call_tool(pid, "write_file", args)
        with pytest.raises(NotCapable):  # ... and the use is spent all the same
            await kernel.call_tool(pid, "write_file", args)
    async with Kernel.open(db_path) as kernel:
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "write_file", args)


async def test_killing_a_waiting_process_cancels_its_request(kernel: Kernel) -> None:
    await open_image(kernel, needs=NEEDS)
    pid = kernel.spawn("agent", caps=[ASK_WRITE], planner=ScriptedPlanner([
        CallTool("write_file", _write())]))
    [request] = await _pending(kernel)
    kernel.kill(pid)
    await kernel.wait(pid, timeout=5)
    assert kernel.approvals(state=None)[0]["state"] == "cancelled"
    with pytest.raises(Conflict):
        kernel.approve(request["id"])


async def test_an_auto_policy_front_end(db_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def policy(request: dict[str, Any]) -> str | None:
        seen.append(request)
        return "once" if request["resource"].endswith(".txt") else "deny"

    async with Kernel.open(db_path, approvers=[AutoPolicy(policy)]) as kernel:
        pid = await _proc(kernel, ASK_WRITE)
        assert await kernel.call_tool(pid, "write_file", _write()) == 5
        with pytest.raises(ApprovalDenied):
            await kernel.call_tool(pid, "write_file", _write("/out/a.sh"))
        assert [s["resource"] for s in seen] == ["/out/a.txt", "/out/a.sh"]
        assert {r["who"] for r in kernel.approvals(state=None)} == {"auto-policy"}


def _cli(*argv: str) -> tuple[int, Any]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(list(argv))
    text = out.getvalue()
    return code, json.loads(text) if text.strip().startswith(("[", "{")) else text


async def test_the_cli_answers_while_the_broker_runs(kernel: Kernel, db_path: Path) -> None:
    pid = await _proc(kernel, ASK_WRITE)
    results: list[Any] = []
    hostile = "\x1b[2J\x1b]0;pwned\x07" + "A" * 500
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results,
                           kernel.call_tool(pid, "write_file", _write(reason=hostile)))
        [request] = await _pending(kernel)
        code, listed = await trio.to_thread.run_sync(_cli, "approvals", "--db", str(db_path),
                                                     "--json")
        assert code == 0 and listed[0]["id"] == request["id"]
        code, text = await trio.to_thread.run_sync(_cli, "approvals", "--db", str(db_path))
        assert code == 0 and "\x1b" not in text
        # Too long for a cell: not shown at all (no prefix), the length said instead.
        assert "A" * 100 not in text and "(529" in text
        # A refused answer from the CLI is kept, then audited by the broker.
        code, _ = await trio.to_thread.run_sync(_cli, "approve", "apr_nonexistent", "--db",
                                                str(db_path))
        assert code == 2
        code, answered = await trio.to_thread.run_sync(
            _cli, "approve", request["id"], "--db", str(db_path), "--json")
        assert code == 0 and answered["state"] == "approved"
    assert results == [5]
    with trio.fail_after(5):  # the broker audits the CLI's refusal at its next sweep
        while not [r for r in kernel.audit() if r["phase"] == "rejected"]:
            await trio.sleep(0.05)
    answer = {r["phase"]: r for r in kernel.audit() if r["syscall"] == "approval.answer"}
    assert answer["rejected"]["detail"]["error"] == "NOT_FOUND"
    assert answer["admin"]["detail"]["who"].startswith("cli:")


async def test_an_answer_given_while_no_broker_runs_is_honoured_on_open(
        db_path: Path) -> None:
    pid, request_id = await _asked_then_closed(db_path, _write())
    code, _ = _cli("deny", request_id, "--always", "--db", str(db_path))
    assert code == 0
    async with Kernel.open(db_path) as kernel:
        answer = [r for r in kernel.audit() if r["syscall"] == "approval.answer"]
        assert answer and answer[0]["detail"]["answer"] == "deny-always"
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "write_file", _write())


async def test_an_approved_one_shot_under_concurrent_threads(db_path: Path) -> None:
    """The grant an approval makes is used once, however many calls race for it: the others
    are sent back to ask again (WouldBlock, from a worker thread), never run."""
    args = _write(data="raced")
    pid, _ = await _asked_then_closed(db_path, args)
    async with Kernel.open(db_path) as kernel:
        request = kernel.approve(kernel.approvals()[0]["id"])
        proc = kernel.process(pid)
        results: list[Any] = []

        def attempt() -> None:
            try:
                results.append(kernel.dispatcher.run_now(proc, None, "fs.write", args))
            except Exception as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(trio.to_thread.run_sync, attempt)
        assert results.count(5) == 1
        assert all(isinstance(r, WouldBlock | NotCapable) for r in results if r != 5)
        intents = [r for r in kernel.audit(pid) if r["phase"] == "intent"
                   and r["syscall"] == "fs.write"]
        # Run after a restart, the call links to the request through the grant it spent.
        grant = kernel.store.get_approval(request["id"])["grant_id"]
        assert len(intents) == 1 and intents[0]["cap_id"] == grant is not None


async def test_a_call_resumed_after_a_restart_waits_on_the_same_request(
        db_path: Path) -> None:
    pid, first_id = await _asked_then_closed(db_path, _write())
    async with Kernel.open(db_path) as kernel:
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, results,
                               kernel.call_tool(pid, "write_file", _write()))
            await trio.sleep(0.05)
            [again] = kernel.approvals()
            assert again["id"] == first_id  # the same request, not a second one
            assert kernel.process(pid).reason in (None, f"approval {first_id}", "reloaded")
            kernel.approve(first_id)
        assert results == [5]
        assert len(kernel.approvals(state=None)) == 1


async def test_deny_always_reaches_the_descendants_already_running(kernel: Kernel) -> None:
    Path(kernel.fs.root, "out").mkdir(exist_ok=True)  # type: ignore[attr-defined]
    await open_image(kernel, needs=(*NEEDS, "proc:*:spawn"))
    parent = kernel.spawn("agent", caps=[ASK_WRITE, "proc:agent:spawn"])
    child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [ASK_WRITE]})
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(results, kernel.call_tool(
            parent, "write_file", _write())))
        [request] = await _pending(kernel)
        kernel.deny(request["id"], always=True)
    assert isinstance(results[0], ApprovalDenied)
    # The child asks no one now: the rule the parent was given holds for it too.
    with trio.fail_after(5), pytest.raises(NotCapable):
        await kernel.call_tool(child, "write_file", _write())
    assert kernel.approvals() == []
    assert any(c["effect"] == "deny" for c in kernel.capabilities(child))
