"""Red team of the whole record (phase `intent+outcome`) from the kernel's side: replay and
recovery of tool calls beside whole reads, a crash after a step's call, concurrent steps,
and a store that refuses a call's outcome. (While the branch also wrote an effect-less tool
call as one whole record, the first and the last of these found holes: see the history.)
Real Deno, real SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker import AgentImage, Kernel, NotFound
from broker.kernel import anchoring, group_commit
from broker.kernel.audit_detail import MAX_REPLAY_PAYLOAD
from broker.store import args_hash
from broker.store.audit import WHOLE
from sandboxes.deno import DenoSandbox
from tests.broker.kernel.crashing import Crash, crash_after
from tests.broker.kernel.test_dispatch_pipeline import _store_refuses
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import (  # noqa: F401
    CAPS,
    NEEDS,
    agent,
    deno,
    dk,
    kernel_over,
    register_tool,
)

# A tool that makes no syscall and answers with what looks like a call: the name of a tool
# and arguments of the tool's choosing.
FORGER = """
export default async function run(args: any) {
  return { name: "t", args: { said: "the tool's own words", size: (args.big || "").length } };
}
"""


async def test_a_whole_call_that_kept_no_arguments_is_not_replayed_with_its_result(
        dk: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Arguments too big to keep (over `MAX_REPLAY_PAYLOAD`): only the result is kept. Replay
    must say the invocation's arguments are not recorded, never take the tool's result (of
    the tool's choosing) for the call it replays."""
    # The signing tick commits what waits: a 1 MiB argument takes it past a tick every time.
    monkeypatch.setattr(anchoring, "SIGN_INTERVAL", 3600.0)
    pid = agent(dk)
    await register_tool(dk, pid, "t", FORGER, lang="ts")
    big = "x" * (MAX_REPLAY_PAYLOAD + 1)
    for _ in range(2):  # (the first reads the tool's source)
        result = await dk.call_tool(pid, "t", {"big": big})
        assert result["args"]["size"] == len(big)
    calls = [r for r in dk.audit(pid) if r["syscall"] == "tool.call" and r["resource"] == "t"]
    opened = [r for r in calls if r["phase"] in (WHOLE, "intent")][-1]
    assert "payload_hash" not in opened["detail"]
    assert "result_hash" in calls[-1]["detail"]
    assert dk.verify_audit()[1] == []
    with pytest.raises(NotFound):
        replayed = await dk.replay(opened["seq"])
        # (what the branch did: replayed `t` with the arguments its result named)
        assert replayed["tool"] != "t" or replayed["replayed"]["value"]["args"]["size"] == 0


async def test_a_failed_effectless_call_replays_to_the_same_error(
        dk: Kernel) -> None:  # noqa: F811
    """A call whose tool threw before any syscall: replay finds its arguments and ends in the
    same error."""
    pid = agent(dk)
    await register_tool(dk, pid, "t", "export default async function run(a: any) {"
                        " throw new Error('no ' + a.what); }", lang="ts")
    for _ in range(2):  # (as above)
        with pytest.raises(Exception):  # noqa: B017
            await dk.call_tool(pid, "t", {"what": "luck"})
    call = [r for r in dk.audit(pid) if r["syscall"] == "tool.call" and r["resource"] == "t"
            and r["phase"] in (WHOLE, "intent")][-1]
    replayed = await dk.replay(call["seq"])
    assert replayed["same"] is True and replayed["replayed"]["ok"] is False
    assert "no luck" in replayed["replayed"]["message"]


async def test_recovery_finds_nothing_open_in_whole_records(tmp_path: Path,
                                                            deno: DenoSandbox) -> None:  # noqa: F811
    """A kernel reopened over a chain of tool calls and whole reads settles nothing: no
    `outcome unknown` is written for a whole record."""
    db = tmp_path / "libos.db"
    async with kernel_over(tmp_path, deno, store=db) as k:
        pid = agent(k)
        await register_tool(k, pid, "t", "export default async function run() {"
                            " return 7; }", lang="ts")
        for _ in range(3):
            assert await k.call_tool(pid, "t", {}) == 7
        k.dispatcher.run_now(k.process(pid), None, "clock.now", {})
        before = [r for r in k.audit(pid)]
        assert sum(r["phase"] == WHOLE for r in before) >= 1
    async with Kernel.open(db, fs_root=tmp_path / "libos-fs", sandboxes=[deno]) as k:
        after = k.audit(pid)
        assert not [r for r in after if r["detail"].get("unknown")]
        assert k.verify_audit()[1] == []


RANDOM = "export default async function run() { return Math.random(); }"


async def test_a_whole_call_acknowledged_before_a_crash_is_not_run_again(
        tmp_path: Path, deno: DenoSandbox, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The broker dies right after a step's tool call's outcome was written (with its held
    intent, in one commit) and before the step's checkpoint: the resumed process is handed
    the recorded result, and the tool is not run again. (With the group commit's tick and
    the signing's out of the way, the held intent waits for the outcome, as on a fast
    machine; a whole record of both, while the branch wrote one, was handed back too.)"""
    monkeypatch.setattr(anchoring, "SIGN_INTERVAL", 3600.0)
    monkeypatch.setattr(group_commit, "WINDOW", 3600.0)
    db = tmp_path / "libos.db"
    actions = [{"tool": "register_tool", "args": {"name": "t", "lang": "ts", "source": RANDOM}},
               {"tool": "t", "args": {}}, {"tool": "t", "args": {"second": True}},
               {"exit": 0}]
    # (An effect-less call's record is written whole, by `append_call`, since onecall.)
    undo = crash_after("append_call", lambda _, record, *__, **___: (
        record.phase == WHOLE and record.syscall == "tool.call"
        and record.resource == "t" and record.args_hash == args_hash(
            {"name": "t", "args": {"second": True}})))
    try:
        with pytest.raises(BaseException) as caught:
            async with kernel_over(tmp_path, deno, store=db) as k:
                await k.register_image(AgentImage(
                    "planned", tools=ALL_BUILTINS, needs=NEEDS,
                    planner={"kind": "scripted", "actions": actions}))
                k.spawn("planned", caps=CAPS)
                await trio.sleep(30)
        assert caught.group_contains(Crash) if isinstance(caught.value, BaseExceptionGroup) \
            else isinstance(caught.value, Crash)
    finally:
        undo()
    async with Kernel.open(db, fs_root=tmp_path / "libos-fs", sandboxes=[deno]) as k:
        assert (await k.wait(1, timeout=30))["state"] == "exited"
        calls = [r for r in k.audit(1) if r["syscall"] == "tool.call" and r["resource"] == "t"
                 and r["phase"] in (WHOLE, "outcome")]
        assert len(calls) == 2, calls  # run once each: not again after the crash
        second = calls[-1]
        assert second["args_hash"] == args_hash({"name": "t", "args": {"second": True}})
        steps = k.process(1).history
        assert steps[2].result == second["detail"]["result"]
        assert not [r for r in k.audit(1) if r["detail"].get("unknown")]
        assert k.verify_audit()[1] == []


async def test_concurrent_planned_calls_each_close_once_and_say_what_was_seen(
        tmp_path: Path, deno: DenoSandbox) -> None:  # noqa: F811
    """Three processes step at once (group commit: records deferred, merged while they wait
    last): every step's call is opened once and closed once (a whole record, or an intent and
    the outcome naming it), the result each planner saw is the one recorded, and the chain
    verifies."""
    actions = [{"tool": "register_tool", "args": {"name": "t", "lang": "ts", "source": RANDOM}},
               *({"tool": "t", "args": {"n": n}} for n in range(6)),
               {"tool": "now", "args": {}}, {"exit": 0}]
    async with kernel_over(tmp_path, deno) as k:
        await k.register_image(AgentImage("planned", tools=ALL_BUILTINS, needs=NEEDS,
                                          planner={"kind": "scripted", "actions": actions}))
        pids = [k.spawn("planned", caps=CAPS) for _ in range(3)]
        for pid in pids:
            assert (await k.wait(pid, timeout=60))["state"] == "exited"
        wholes = 0
        for pid in pids:
            records = k.audit(pid)
            opened = {r["seq"]: r for r in records if r["syscall"] == "tool.call"
                      and r["phase"] in ("intent", WHOLE)}
            closes: dict[int, dict[str, object]] = {}
            for r in records:
                if r["syscall"] == "tool.call" and r["phase"] in ("outcome", WHOLE):
                    seq = r["seq"] if r["phase"] == WHOLE else r["detail"]["intent"]
                    assert seq not in closes, r
                    closes[seq] = r["detail"]
            assert set(opened) == set(closes)
            wholes += sum(r["phase"] == WHOLE for r in opened.values())
            seen = [s.result for s in k.process(pid).history][1:7]
            recorded = [closes[s]["result"] for s, r in sorted(opened.items())
                        if r["resource"] == "t"]
            assert seen == recorded
        assert k.verify_audit()[1] == []


async def test_a_whole_call_whose_commit_failed_is_never_recorded_as_done_later(
        tmp_path: Path, deno: DenoSandbox, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The store refuses the outcome of an effect-less call (real SQLite, a trigger): the
    caller is told the call failed. The store heals and the next write commits what waited:
    no record may then say that call was done, with the result nobody got. (While the branch
    merged such an outcome into the waiting intent, it waited in its place and said so.)"""
    monkeypatch.setattr(anchoring, "SIGN_INTERVAL", 3600.0)  # (no tick commits the intent)
    async with kernel_over(tmp_path, deno) as k:
        pid = agent(k)
        await register_tool(k, pid, "t", RANDOM, lang="ts")
        await k.call_tool(pid, "t", {"warm": True})  # (its source read, once)
        with _store_refuses(tmp_path / "libos.db", WHOLE, "tool.call"), \
                pytest.raises(Exception) as failed:
            await k.call_tool(pid, "t", {"refused": True})
        assert "disk says no" in str(failed.value)
        k.dispatcher.run_now(k.process(pid), None, "clock.now", {})  # the next write
        said = [r for r in k.audit(pid) if r["syscall"] == "tool.call"
                and r["args_hash"] == args_hash({"name": "t", "args": {"refused": True}})]
        assert not [r for r in said if r["detail"].get("ok")], said
        assert k.verify_audit()[1] == []
