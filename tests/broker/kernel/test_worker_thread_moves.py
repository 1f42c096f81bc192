"""Moves of processes that start on a sandbox worker thread (a threaded WASM call answers
cheap syscalls there) are made on trio's thread (`broker.kernel.trio_thread`): a kill by a
spent budget, `proc.signal`, `proc.spawn`, and a kill that lands a waiting exit. Real
Wasmtime calls in worker threads (`inline=False`), a real kernel over SQLite. Without the hop,
trio's objects were touched off its thread: a waiter or a follower was never woken (the
`RuntimeError` stayed in the worker), so every test runs under `trio.fail_after`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from broker import AgentImage, Budget, CallTool, Conflict, Kernel, LimitExceeded, ScriptedPlanner
from broker.kernel import reaping, recovery
from sandboxes.wasm import WasmSandbox
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.test_wasm import CAPS, NEEDS, lib, register

LIMIT = 20  # seconds: far above what any of these takes; a hang fails, never blocks the run
BUDGET = 12  # the lead's syscalls: a few for its setup, the rest spent by a child's loop


def _loop_of(name: str, args_wat: str, times: int) -> str:
    """A WASM tool making syscall `name` (args written by `args_wat`) `times` times, returning
    the first failure's response, else the last value."""
    return lib(f"""
  (data (i32.const 1024) "{name}")
  (data (i32.const 1200) "image")
  (data (i32.const 1210) "kid")
  (data (i32.const 1220) "pid")
  (data (i32.const 1230) "signal")
  (data (i32.const 1240) "kill")
  (data (i32.const 1250) "pause")
  (data (i32.const 1260) "resume")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (local $i i32)
    (loop $again
      (call $sys_begin (i32.const 1024) (i32.const {len(name)}))
      {args_wat}
      (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const {times}))))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))""")


def _signal(pid: int, signal: str) -> str:
    at, size = {"kill": (1240, 4), "pause": (1250, 5), "resume": (1260, 6)}[signal]
    return _loop_of("proc.signal", f"""(call $mp_map (i32.const 2))
      (call $mp_str (i32.const 1220) (i32.const 3))
      (call $mp_int (i64.const {pid}))
      (call $mp_str (i32.const 1230) (i32.const 6))
      (call $mp_str (i32.const {at}) (i32.const {size}))""", 1)


@pytest.fixture
async def threaded(tmp_path: Path) -> AsyncIterator[Kernel]:
    """A kernel whose WASM calls all run in worker threads."""
    (tmp_path / "fs" / "data").mkdir(parents=True)
    async with Kernel.open(tmp_path / "libos.db", fs_root=tmp_path / "fs",
                           sandboxes=[WasmSandbox(tmp_path / "cache", inline=False)]) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        yield k


async def _waited(kernel: Kernel, pid: int, into: dict[int, dict[str, Any]]) -> None:
    into[pid] = await kernel.wait(pid)


async def test_a_childs_threaded_syscall_spending_its_parents_budget_kills_it(
        threaded: Kernel) -> None:
    """`Budgets.charge` on the worker thread kills the lead (and the child with it): a task
    waiting for the lead wakes, the kill is in the store and the events."""
    k = threaded
    await k.register_image(AgentImage("lead", tools=ALL_BUILTINS, needs=(*NEEDS, "proc:*:spawn"),
                                      budget=Budget(syscalls=BUDGET)))
    lead = k.spawn("lead", caps=[*CAPS, "proc:agent:spawn"])
    child = await k.call_tool(lead, "spawn", {"image": "agent", "caps": CAPS})
    await register(k, child, "clocks", _loop_of("clock.now", "(call $mp_map (i32.const 0))",
                                                 BUDGET * 2))
    ended: dict[int, dict[str, Any]] = {}
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_waited, k, lead, ended)
            nursery.start_soon(_waited, k, child, ended)
            await trio.sleep(0.05)  # (both parked in `done.wait`)
            with pytest.raises(LimitExceeded, match=f"ancestor {lead}"):
                await k.call_tool(child, "clocks", {})
    assert ended[lead]["state"] == "killed" and "syscalls budget" in ended[lead]["reason"]
    assert ended[child]["state"] == "killed"
    assert ended[child]["reason"].startswith(f"parent {lead} was killed")
    assert k.store.get_process(lead)["state"] == "killed"
    states = [e["data"]["new"] for e in k.store.events(pid=lead) if e["kind"] == "state"]
    assert states[-1] == "killed"
    assert k.verify_audit()[1] == []


async def test_proc_signal_from_a_threaded_call_kills_pauses_and_resumes(
        threaded: Kernel) -> None:
    k = threaded
    await k.register_image(AgentImage("kid", tools=("now", "sleep"), needs=("clock:*:read,sleep",),
                                      planner={"kind": "scripted", "actions": [
                                          {"tool": "sleep", "args": {"seconds": 0.05}}] * 400}))
    await k.register_image(AgentImage("boss", tools=ALL_BUILTINS,
                                      needs=(*NEEDS, "proc:*:spawn,signal")))
    boss = k.spawn("boss", caps=[*CAPS, "proc:kid:spawn"])
    kid = await k.call_tool(boss, "spawn", {"image": "kid", "caps": ["clock:*:read,sleep"]})
    for signal in ("pause", "resume", "kill"):
        await register(k, boss, signal, _signal(kid, signal))
    ended: dict[int, dict[str, Any]] = {}
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_waited, k, kid, ended)
            async with k.events.follow() as events:
                assert (await k.call_tool(boss, "pause", {}))["state"] in ("running", "paused",
                                                                            "waiting")
                await _until(events, kid, "paused")
                assert (await k.call_tool(boss, "resume", {}))["state"] == "runnable"
                await _until(events, kid, "running")
                assert (await k.call_tool(boss, "kill", {}))["state"] == "killed"
                await _until(events, kid, "killed")
    assert ended[kid]["state"] == "killed" and ended[kid]["reason"] == f"killed by {boss}"
    assert k.store.get_process(kid)["state"] == "killed"


async def _until(events: trio.MemoryReceiveChannel[dict[str, Any]], pid: int,
                 state: str) -> None:
    async for event in events:
        if event["pid"] == pid and event["kind"] == "state" and event["data"]["new"] == state:
            return


async def _spawner_with_fork_kid(k: Kernel) -> int:
    """A process that may spawn `kid`, with a WAT tool `fork_kid` that spawns one (threaded)."""
    await k.register_image(AgentImage("spawner", tools=ALL_BUILTINS,
                                      needs=(*NEEDS, "proc:*:spawn")))
    pid = k.spawn("spawner", caps=[*CAPS, "proc:kid:spawn"])
    await register(k, pid, "fork_kid", _loop_of("proc.spawn", """(call $mp_map (i32.const 1))
      (call $mp_str (i32.const 1200) (i32.const 5))
      (call $mp_str (i32.const 1210) (i32.const 3))""", 1))
    return pid


async def test_proc_spawn_from_a_threaded_call_starts_the_childs_task(threaded: Kernel) -> None:
    k = threaded
    await k.register_image(AgentImage("kid", tools=("now",), needs=("clock:*:read",),
                                      planner={"kind": "scripted", "actions": [
                                          {"tool": "now", "args": {}}] * 3}))
    pid = await _spawner_with_fork_kid(k)
    with trio.fail_after(LIMIT):
        kid = await k.call_tool(pid, "fork_kid", {})
        status = await k.wait(kid)
    assert status["state"] == "exited" and status["exit_code"] == 0
    assert len(k.process(kid).history) == 3


@pytest.fixture
def frozen_clock() -> MockClock:
    """trio's time stands still (no commit window, flush or poll comes due by itself) unless
    trio has had nothing to do for 3 real seconds: then it jumps to the next deadline, so a
    hang ends at `fail_after` instead of never."""
    return MockClock(autojump_threshold=3.0)


async def test_a_kill_from_a_worker_thread_while_the_exit_waits_lands_it_on_trios_thread(
        frozen_clock: MockClock, kernel: Kernel) -> None:
    """A process's exit waits for the group commit (another process sleeps beside it, so
    exits are grouped; with trio's time frozen, no other commit comes meanwhile). A kill from
    a worker thread (as a budget spent by a threaded call makes it) lands the exit first, on
    trio's thread: exited, not killed, and a follower waiting at that moment sees it."""
    await kernel.register_image(AgentImage("ticker", tools=("now", "sleep"),
                                           needs=("clock:*:read,sleep",)))
    caps = ["clock:*:read,sleep"]
    sleeper = kernel.spawn("ticker", caps=caps,
                           planner=ScriptedPlanner([CallTool("sleep", {"seconds": 3600})]))
    pid = kernel.spawn("ticker", caps=caps, planner=ScriptedPlanner([CallTool("now", {})]))
    group = kernel.dispatcher.group
    real = group.durable
    killed: list[tuple[str, bool]] = []

    async def durable() -> None:
        proc = kernel.process(pid)
        if proc.exiting is not None and not killed:
            await trio.to_thread.run_sync(kernel.terminate, pid, "killed from a thread")
            killed.append((proc.state.value, proc.exiting is None))
        await real()

    group.durable = durable  # type: ignore[method-assign]
    seen: list[int] = []

    async def follow() -> None:
        async with kernel.events.follow() as events:
            async for event in events:
                if event["kind"] == "state" and event["data"]["new"] == "exited":
                    seen.append(event["pid"])
                    return

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            status = await kernel.wait(pid)
        kernel.kill(sleeper)
        assert (await kernel.wait(sleeper))["state"] == "killed"
    assert killed == [("exited", True)]
    assert status["state"] == "exited" and seen == [pid]
    states = [e["data"]["new"] for e in kernel.store.events(pid=pid) if e["kind"] == "state"]
    assert states[-1] == "exited" and "killed" not in states
    assert kernel.verify_audit()[1] == []


async def _register_kid(k: Kernel) -> None:
    """An image whose process sleeps in short steps for a while: a target that stays live."""
    await k.register_image(AgentImage("kid", tools=("now", "sleep"),
                                      needs=("clock:*:read,sleep",),
                                      planner={"kind": "scripted", "actions": [
                                          {"tool": "sleep", "args": {"seconds": 0.05}}] * 400}))


async def test_a_spawn_whose_parent_is_killed_before_its_hop_starts_no_child(
        threaded: Kernel) -> None:
    """A threaded call's `proc.spawn` is checked on its worker thread (the parent live), then
    hops to trio's thread to spawn; a kill of the parent that trio's thread runs in between
    (an operator's, an ancestor's budget) must refuse the spawn. It did not: the child of a
    killed parent started and lived on, out of reach of the kill that ended its lineage. The
    kill is made there by a wrapper of the spawn check (on the worker), hopping to trio's
    thread as any other move of trio's would come first."""
    k = threaded
    await _register_kid(k)
    pid = await _spawner_with_fork_kid(k)
    spawner = k.spawner
    check = spawner.check_spawn

    def check_then_killed(parent: int, image: str, caps: Any) -> None:
        check(parent, image, caps)
        trio.from_thread.run_sync(k.terminate, parent, "killed meanwhile")

    spawner.check_spawn = check_then_killed  # type: ignore[method-assign]
    with trio.fail_after(LIMIT):
        with pytest.raises(Conflict, match=f"process {pid} has killed"):
            await k.call_tool(pid, "fork_kid", {})
        live = [p for p in k._procs.values() if p.parent == pid and p.alive]
        for child in live:  # (end them, so the kernel can close)
            k.kill(child.pid)
    assert k.process(pid).state.value == "killed"
    assert live == [], [(p.pid, p.state.value) for p in live]
    assert k.verify_audit()[1] == []


async def test_a_signal_whose_sender_is_killed_before_its_hop_is_refused(
        threaded: Kernel) -> None:
    """As the spawn above: `proc.signal` checked on the worker thread, its sender killed on
    trio's thread before the hop runs it. A pause from it then placed a hold of a dead
    process (that only the operator or an ancestor could lift); now it is refused and the
    target runs on. (Its neighbour, a pause from a live sender, is the test above.)"""
    k = threaded
    await _register_kid(k)
    await k.register_image(AgentImage("boss", tools=ALL_BUILTINS,
                                      needs=(*NEEDS, "proc:*:spawn,signal")))
    boss = k.spawn("boss", caps=[*CAPS, "proc:kid:spawn"])
    kid = await k.call_tool(boss, "spawn", {"image": "kid", "caps": ["clock:*:read,sleep"]})
    outsider = k.spawn("boss", caps=[*CAPS, f"proc:{kid}:signal"])
    await register(k, outsider, "pause", _signal(kid, "pause"))
    real = k.is_descendant

    def checked_then_killed(ancestor: int, pid: int) -> bool:
        answer = real(ancestor, pid)
        if ancestor == outsider and not trio.lowlevel.in_trio_run():  # (on the worker)
            trio.from_thread.run_sync(k.terminate, outsider, "killed meanwhile")
        return answer

    k.is_descendant = checked_then_killed  # type: ignore[method-assign]
    with trio.fail_after(LIMIT):
        with pytest.raises(Conflict, match=f"process {outsider} has killed"):
            await k.call_tool(outsider, "pause", {})
        k.is_descendant = real  # type: ignore[method-assign]
        held = set(k.process(kid).holds)
        k.kill(kid)
        await k.wait(kid)
    assert k.process(outsider).state.value == "killed"
    assert held == set()
    assert k.verify_audit()[1] == []


async def test_an_ended_process_a_threaded_call_names_is_loaded_back_on_trios_thread(
        threaded: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ended processes leave the table (`reaping`); one that a threaded call's check names
    (`proc.signal`'s resume asks who holds it) was loaded back on the worker thread: the
    table changed (and was swept, iterating it) there while trio's thread changed it too,
    its holds restored and its `done` made off trio's thread. Now the load hops to trio's
    thread; the refusal is typed and audited, and the caller's next call works."""
    monkeypatch.setattr(reaping, "FIRST_SWEEP", 16)
    monkeypatch.setattr(reaping, "KEEP_ENDED", 4)
    threads: list[bool] = []
    reload = recovery.reload

    def watched(kernel: Kernel, pid: int) -> object:  # (the real load; where it ran, kept)
        threads.append(trio.lowlevel.in_trio_run())
        return reload(kernel, pid)

    monkeypatch.setattr(recovery, "reload", watched)
    k = threaded
    monkeypatch.setattr(k, "_sweep_at", 16)  # (the kernel was opened with the first size)
    await k.register_image(AgentImage("boss", tools=ALL_BUILTINS,
                                      needs=(*NEEDS, "proc:*:signal")))
    old = k.spawn("agent", caps=CAPS)
    k.exit(old, 0)
    for _ in range(30):
        k.exit(k.spawn("agent", caps=CAPS), 0)
    assert k.loaded(old) is None
    boss = k.spawn("boss", caps=[*CAPS, "proc:*:signal"])
    await register(k, boss, "resume", _signal(old, "resume"))
    with trio.fail_after(LIMIT), pytest.raises(Conflict, match="not paused"):
        await k.call_tool(boss, "resume", {})
    assert threads and all(threads)
    assert [r["phase"] for r in k.audit(boss) if r["syscall"] == "proc.signal"][-1] in (
        "outcome", "error", "intent+outcome")
    assert await k.call_tool(boss, "now", {})
