"""A host's own verbs under a store that fails (`broker.kernel.faults.typed_store_faults`):
each is a typed `Conflict`, never the database driver's own error, and what it did not write
did not happen: the broker's memory still says what the store does. Each test on both
backends: real SQLite, and a real PostgreSQL server (whose driver's errors other than a lost
connection reached the host raw), made to fail by triggers
(`tests/broker/kernel/faulty_store.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, CallTool, Conflict, Kernel, LibosError, ScriptedPlanner
from broker.kernel.process import AgentProcess
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_exit_commits import _spawn_tickers
from tests.broker.kernel.test_exit_commits_redteam import _during_exit
from tests.conftest import open_image

TABLES = ("images", "processes", "capabilities", "object_types", "objects", "tool_sources",
          "process_tools", "events", "audit", "observations", "checkpoint_log",
          "mailbox", "raised", "holds")
CAPS = ["clock:*:sleep", "clock:*:read"]


@pytest.fixture
def fault(store_at: Path | str) -> Iterator[Fault]:
    with Fault(store_at) as switch:
        yield switch


@pytest.fixture
async def kernel(store_at: Path | str) -> AsyncIterator[Kernel]:
    async with Kernel.open(store_at) as k:
        yield k


async def _sleeper_and_host(kernel: Kernel) -> tuple[int, int]:
    await kernel.register_image(AgentImage("clock", tools=("sleep", "now"), needs=tuple(CAPS)))
    sleeper = kernel.spawn("clock", caps=CAPS,
                           planner=ScriptedPlanner([CallTool("sleep", {"seconds": 3600})]))
    host = kernel.spawn("clock", caps=CAPS)  # (host-driven)
    await trio.sleep(0.3)
    return sleeper, host


def _states(kernel: Kernel, fault: Fault) -> list[tuple[int, str, int]]:
    """Each process as the broker's memory has it, beside the store's rows."""
    return [(p["pid"], p["state"], fault.count("SELECT count(*) FROM processes WHERE pid=? "
                                               "AND state=?", p["pid"], p["state"]))
            for p in kernel.ps()]


@pytest.mark.parametrize("tables,updates", [(("audit",), ()), ((), ("processes",))],
                         ids=["audit", "process-row"])
async def test_a_host_kill_while_the_store_fails_is_a_conflict_and_kills_nothing(
        kernel: Kernel, fault: Fault, tables: tuple[str, ...], updates: tuple[str, ...]) -> None:
    """It raised the raw sqlite3 error to the embedder."""
    fault.install(*tables, updates=updates)
    sleeper, _ = await _sleeper_and_host(kernel)
    before = _states(kernel, fault)
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        kernel.kill(sleeper)
    assert kernel.process(sleeper).alive and _states(kernel, fault) == before
    assert all(stored == 1 for _, _, stored in before)
    fault.set(False)
    kernel.kill(sleeper)  # the store healed: the same act works
    assert (await kernel.wait(sleeper, timeout=30))["state"] == "killed"
    assert kernel.verify_audit()[1] == []


async def test_a_host_call_while_the_store_fails_is_a_conflict(kernel: Kernel,
                                                               fault: Fault) -> None:
    fault.install("audit")
    _, host = await _sleeper_and_host(kernel)
    records = fault.count("SELECT count(*) FROM audit")
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        await kernel.call_tool(host, "now", {})
    assert fault.count("SELECT count(*) FROM audit") == records  # not a record of it
    fault.set(False)
    assert await kernel.call_tool(host, "now", {})
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("table", ["processes", "capabilities", "audit"])
async def test_a_spawn_while_the_store_fails_is_a_conflict_and_leaves_no_process(
        kernel: Kernel, fault: Fault, table: str) -> None:
    """Its row is committed first, its grants and their record after: when those fail the
    process stayed, `created`, in memory and in the store (reloaded as runnable after a
    restart). Now the broker forgets it and its row is ended with the next commit."""
    fault.install(table)
    await _sleeper_and_host(kernel)
    before = _states(kernel, fault)
    live = sorted(kernel.store.live_pids())
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        kernel.spawn("clock", caps=CAPS)
    after = _states(kernel, fault)  # (its row, if it was written, is ended: never live)
    assert after[:len(before)] == before
    assert [state for _, state, _ in after[len(before):]] in ([], ["killed"])
    fault.set(False)
    assert kernel.process(kernel.spawn("clock", caps=CAPS)).alive  # (a commit: it lands)
    assert sorted(kernel.store.live_pids()) == sorted([*live, max(kernel.store.live_pids())])
    assert all(p["state"] != "created" for p in kernel.store.list_processes())
    assert kernel.verify_audit()[1] == []


async def test_no_host_verb_raises_the_stores_own_error(kernel: Kernel, fault: Fault) -> None:
    """Every verb that writes, with every table failing: a typed error each (they all
    raised sqlite3.IntegrityError)."""
    fault.install(*TABLES, updates=TABLES)
    sleeper, host = await _sleeper_and_host(kernel)
    kernel.checkpoint(host)
    kernel.put_object("o", {"x": 0}, ns="shared")
    kernel.write_file("/seed.txt", "x")
    cap = kernel.capabilities(host)[0]["id"]
    fault.set(True)
    verbs: dict[str, Callable[[], Any]] = {
        "kill": lambda: kernel.kill(sleeper), "pause": lambda: kernel.pause(sleeper),
        "resume": lambda: kernel.resume(sleeper),
        "spawn": lambda: kernel.spawn("clock", caps=["clock:*:read"]),
        "fork": lambda: kernel.fork(host), "checkpoint": lambda: kernel.checkpoint(host),
        "revoke": lambda: kernel.revoke(cap),
        "send_message": lambda: kernel.send_message(None, host, {"x": 1}),
        "raise_event": lambda: kernel.raise_event("e", {}),
        "define_type": lambda: kernel.define_type("t", {"type": "object"}),
        "commit_image": lambda: kernel.commit_image(host, "committed"),
        "call_tool": lambda: kernel.call_tool(host, "now", {}),
        "register_image": lambda: kernel.register_image(
            AgentImage("other", tools=("now",), needs=("clock:*:read",))),
        "put_object": lambda: kernel.put_object("o", {"x": 1}, ns="shared"),
        "get_object": lambda: kernel.get_object("o", ns="shared"),
        "write_file": lambda: kernel.write_file("/seed.txt", "x"),
        "read_file": lambda: kernel.read_file("/seed.txt"),
        "exit": lambda: kernel.exit(host, 0),
    }
    raised = {}
    for name, verb in verbs.items():
        try:
            done = verb()
            if isinstance(done, Awaitable):
                await done
        except Conflict:
            raised[name] = "Conflict"
        except Exception as exc:  # the driver's own (sqlite3's, psycopg's), or another
            raised[name] = f"raw {type(exc).__module__}.{type(exc).__name__}"
    assert raised == dict.fromkeys(verbs, "Conflict")
    fault.set(False)
    assert kernel.verify_audit()[1] == []


async def test_a_kill_that_lands_a_waiting_exit_while_the_store_fails_is_a_conflict(
        kernel: Kernel, fault: Fault, caplog: pytest.LogCaptureFixture) -> None:
    """A kill (as `proc.signal` of another process makes it) of a process whose exit waits
    for the group commit lands that exit first, committed at once (`Exits.land`): that
    commit failing gave the killer SQLite's own error (as a syscall, an `InvalidArgument`
    and a traceback in the log). Now `Conflict`; the exit commits once the store heals, and
    the process ends exited, as if the kill came after."""
    fault.install(updates=("processes",))
    pids = await _spawn_tickers(kernel, 3)
    told: list[BaseException] = []

    def kill(proc: AgentProcess) -> None:
        fault.set(True)
        try:
            kernel.terminate(proc.pid, "killed by 1")
        except BaseException as exc:  # what the killer is told, whatever it is
            told.append(exc)
        finally:
            fault.set(False)

    hit = _during_exit(kernel, pids, kill)
    with trio.fail_after(60):
        statuses = [await kernel.wait(pid) for pid in pids]
    [proc] = hit
    assert [isinstance(e, Conflict) for e in told] == [True] and "disk full" in str(told[0])
    assert [s["state"] for s in statuses] == ["exited"] * 3
    assert kernel.store.get_process(proc.pid)["state"] == "exited"
    assert not [r for r in caplog.records if r.exc_info]
    assert kernel.verify_audit()[1] == []


async def test_a_child_spawn_whose_grants_fail_gives_its_parent_its_uses_back(
        kernel: Kernel, fault: Fault) -> None:
    """`proc.spawn` of a child with some of its parent's counted uses, the grants' write
    failing: the parent keeps every use in the broker's memory, as the store has it, and no
    child is left (it was left `created`, holding the uses its parent had lost)."""
    fault.install("capabilities", updates=("capabilities",))
    await open_image(kernel)
    counted = {"kind": "fs", "scope": "/data/**", "rights": ["read"], "uses": 5}
    parent = kernel.spawn("agent", caps=[counted, "proc:agent:spawn"])
    [cap] = [c for c in kernel.capabilities(parent) if c["kind"] == "fs"]
    fault.set(True)
    with pytest.raises(LibosError):  # (the dispatcher's: typed, whatever the primitive raised)
        await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [{**counted,
                                                                              "uses": 2}]})
    fault.set(False)
    stored = {c.id: c.uses for _, c in kernel.store.load_capabilities()}
    [now] = [c for c in kernel.capabilities(parent) if c["kind"] == "fs"]
    assert now["uses"] == stored[cap["id"]] == 5
    assert [p["pid"] for p in kernel.ps() if p["state"] != "killed"] == [parent]
    assert all(p["state"] != "created" for p in kernel.store.list_processes())
    child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [{**counted,
                                                                                 "uses": 2}]})
    assert [c["uses"] for c in kernel.capabilities(parent) if c["kind"] == "fs"] == [3]
    assert kernel.process(child).alive and kernel.verify_audit()[1] == []


async def test_a_revocation_that_is_not_stored_is_not_done(kernel: Kernel, fault: Fault) -> None:
    """The capabilities left the broker's memory before their deletion was written: when that
    failed the host was told it failed, the broker no longer held them (a retry: `NotFound`)
    while the store did (a restart gave them back). Now they are held again, as stored, and a
    retry once the store heals revokes them."""
    fault.install("audit")
    _, host = await _sleeper_and_host(kernel)
    [cap] = [c for c in kernel.capabilities(host) if c["kind"] == "clock"][:1]
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        kernel.revoke(cap["id"])
    fault.set(False)
    assert cap["id"] in {c["id"] for c in kernel.capabilities(host)}
    assert await kernel.call_tool(host, "now", {})  # still what it allows
    assert [c.id for c in kernel.revoke(cap["id"])] == [cap["id"]]
    assert cap["id"] not in {c["id"] for c in kernel.capabilities(host)}
    assert cap["id"] not in {c.id for _, c in kernel.store.load_capabilities()}
    assert kernel.verify_audit()[1] == []


async def test_a_pause_that_is_not_stored_is_not_held(kernel: Kernel, fault: Fault) -> None:
    """The hold went into memory before its write: when that failed the process was held in
    memory only, and a retry (the hold already in memory) wrote nothing, so a restart let it
    go. Now nothing is held until it is stored, and the retry stores it."""
    fault.install("holds")
    sleeper, _ = await _sleeper_and_host(kernel)
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        kernel.pause(sleeper)
    fault.set(False)
    assert not kernel.process(sleeper).holds and kernel.store.holds_of(sleeper) == set()
    kernel.pause(sleeper)
    assert kernel.process(sleeper).holds and kernel.store.holds_of(sleeper) == \
        kernel.process(sleeper).holds
    kernel.resume(sleeper)
    assert not kernel.process(sleeper).holds and kernel.store.holds_of(sleeper) == set()


@pytest.mark.parametrize("verb", ["kill", "pause", "resume"])
async def test_a_control_whose_act_fails_after_its_record_is_audited_as_failed(
        kernel: Kernel, fault: Fault, verb: str) -> None:
    """The operator's `admin` record is written before the act: when the act's own write
    then failed (the host told Conflict), the chain kept the record of a kill, pause or
    resume that was not done, and nothing in it said so. Now a `rejected` record with the
    error follows it, as for a host act of `host_api` that fails after its record (a kill's
    record is written with its rows since lane loose: refused, it is not written at all)."""
    fault.install("holds", updates=("processes", "holds"))
    _, host = await _sleeper_and_host(kernel)  # (runnable: each act moves it)
    if verb == "resume":
        kernel.pause(host)
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        getattr(kernel, verb)(host)
    fault.set(False)
    signals = [(r["phase"], r["detail"]["signal"], r["detail"].get("error"))
               for r in kernel.audit(host) if r["syscall"] == "proc.signal"]
    # (A kill's record is written with the rows it ends: refused, only its refusal.)
    done = [] if verb == "kill" else [("admin", verb, None)]
    assert signals[-2:][-len(done) - 1:] == [*done, ("rejected", verb, "CONFLICT")]
    assert kernel.verify_audit()[1] == []
    getattr(kernel, verb)(host)  # the store healed: the same act works, audited as done
    assert [r["phase"] for r in kernel.audit(host)][-1] == "admin"


@pytest.mark.parametrize("act", ["host.obj.put", "host.exit"])
async def test_a_host_act_whose_write_fails_after_its_record_is_audited_as_failed(
        kernel: Kernel, fault: Fault, act: str) -> None:
    """`host_api`'s acts are recorded, then done; a refused or failed one is recorded as
    `rejected`. A store failing the act's own write after its record raised the driver's
    error to the host, and left the record of an act that was not done, nothing saying so."""
    fault.install("objects", updates=("processes",))
    _, host = await _sleeper_and_host(kernel)
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        if act == "host.obj.put":
            kernel.put_object("o", {"x": 1}, ns="shared")
        else:
            kernel.exit(host, 3)
    fault.set(False)
    phases = [(r["phase"], r["detail"].get("error")) for r in kernel.audit()
              if r["syscall"] == act]
    assert phases == [("admin", None), ("rejected", "CONFLICT")]
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("table", ["checkpoint_log", "events"])
async def test_a_fork_told_conflict_left_no_child_and_no_record_of_one(
        kernel: Kernel, fault: Fault, table: str) -> None:
    """A fork's grants, its `host.fork` record and its move to runnable commit first; its
    history, its checkpoint and its event were written after. When one of those failed the
    host was told Conflict while the chain said it forked and the child lived, runnable,
    in the broker and in the store. Now they are written before the grants' transaction
    (a failure: no child, no record), and its event waits for the flush."""
    fault.install(table)
    _, host = await _sleeper_and_host(kernel)
    await kernel.call_tool(host, "now", {})
    kernel.checkpoint(host)
    before = {p["pid"] for p in kernel.store.list_processes()}
    fault.set(True)
    try:
        child = kernel.fork(host)
    except Conflict as exc:
        assert "disk full" in str(exc)
        child = None
    fault.set(False)
    kernel.checkpoint(host)  # (a commit: a deferred end lands)
    forks = [r["pid"] for r in kernel.audit() if r["syscall"] == "host.fork"
             and r["phase"] == "admin"]
    new = {p["pid"]: p["state"] for p in kernel.store.list_processes()
           if p["pid"] not in before}
    live = [p["pid"] for p in kernel.ps() if p["pid"] not in before
            and p["state"] not in ("killed", "exited")]
    if child is None:  # told it failed: nothing of it done, nothing of it recorded
        assert forks == [] and live == [] and set(new.values()) <= {"killed"}, (forks, new)
    else:  # done: recorded, alive, its checkpoint and history stored
        assert forks == [child] and live == [child] and new == {child: "runnable"}
        assert kernel.store.checkpoint(child) is not None
    assert kernel.verify_audit()[1] == []


async def test_a_fork_of_a_paused_process_told_conflict_left_no_unpaused_child(
        kernel: Kernel, fault: Fault) -> None:
    """A child takes its parent's holds: they were written after the spawn's transaction, so
    when that write failed the host was told Conflict while the child lived, recorded as
    forked, runnable and not held: a process the operator paused had a copy running free.
    Now its holds are stored before that transaction and it is stored paused with it."""
    fault.install("holds")
    _, host = await _sleeper_and_host(kernel)
    kernel.pause(host)
    before = {p["pid"] for p in kernel.store.list_processes()}
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        kernel.fork(host)
    fault.set(False)
    kernel.checkpoint(host)  # (a commit: a deferred end lands)
    assert [p["state"] for p in kernel.store.list_processes() if p["pid"] not in before] \
        in ([], ["killed"])
    assert not [r for r in kernel.audit() if r["syscall"] == "host.fork"]
    child = kernel.fork(host)  # the store healed: a paused copy, held as its source is
    assert kernel.process(child).state.value == "paused"
    assert kernel.store.get_process(child)["state"] == "paused"
    assert kernel.store.holds_of(child) == kernel.process(child).holds == {"operator"}
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("verb", ["kill", "pause", "resume"])
async def test_a_signal_the_store_refuses_is_a_conflict_and_signals_nothing(
        kernel: Kernel, fault: Fault, verb: str, caplog: pytest.LogCaptureFixture) -> None:
    """`proc.signal` whose write fails (the kill's transaction, the hold's row): SQLite's own
    error left the primitive, and the dispatcher made it an `InvalidArgument` with a
    traceback logged at ERROR. Now the typed "store refused, try again" `Conflict`, no
    traceback, and nothing of the signal in the broker's memory or the store; once the store
    heals, the same call works. (A resume deletes hold rows, which no trigger fails: its
    move of the paused process's row fails.)"""
    fault.install("holds", updates=("processes",))
    await kernel.register_image(AgentImage("ctl", tools=("signal",), needs=("proc:*:signal",)))
    _, target = await _sleeper_and_host(kernel)
    sender = kernel.spawn("ctl", caps=["proc:*:signal"])  # (host-driven, as the target)
    if verb == "resume":
        await kernel.call_tool(sender, "signal", {"pid": target, "signal": "pause"})
    before = (_states(kernel, fault), kernel.process(target).holds,
              kernel.store.holds_of(target))
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        await kernel.call_tool(sender, "signal", {"pid": target, "signal": verb})
    fault.set(False)
    assert (_states(kernel, fault), kernel.process(target).holds,
            kernel.store.holds_of(target)) == before
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    await kernel.call_tool(sender, "signal", {"pid": target, "signal": verb})
    assert (kernel.process(target).alive, bool(kernel.process(target).holds)) == {
        "kill": (False, False), "pause": (True, True), "resume": (True, False)}[verb]
    assert kernel.verify_audit()[1] == []
