"""Ended processes leave the kernel's table (`broker.kernel.reaping`): many spawns and exits
keep it small, the store still answers about every ended process, and an ended process with a
live descendant stays until that one ends, so the counts of the ancestors above it stay right.
What the broker keeps per process goes with it: its capabilities (but those a revocation must
still reach through) and the planner factory of its descendants.
(Small thresholds here; the kernel's are 1024 and 256.) Real SQLite."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from broker import AgentImage, CallTool, Conflict, Kernel, ScriptedPlanner
from broker.caps.capability import Capability
from broker.caps.table import CapabilityTable
from broker.kernel import reaping, recovery

SHARED = "fs:/w:read,write"


@pytest.fixture(autouse=True)
def small_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reaping, "FIRST_SWEEP", 16)
    monkeypatch.setattr(reaping, "KEEP_ENDED", 4)


async def churn(k: Kernel, cycles: int) -> int:
    """Spawn and end `cycles` processes one after another; the table's largest size."""
    largest = 0
    for n in range(cycles):
        pid = k.spawn("host")
        largest = max(largest, len(k._procs))
        k.exit(pid, 0, {"n": n})
    return largest


async def test_many_spawns_and_exits_keep_the_table_small_and_the_store_answers(
        tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "libos.db") as k:
        await k.register_image(AgentImage("host"))
        assert await churn(k, 300) <= 16
        first = await k.wait(1)  # long gone from the table: from the store
        assert (first["state"], first["exit_code"], first["result"]) == ("exited", 0, {"n": 0})
        assert k.process(150).exit_code == 0 and k.process_info(150)["state"] == "exited"
        assert [c["scope"] for c in k.capabilities(2)] == ["proc/2"]  # its own namespace
        assert len(k.ps()) == 300 and k.verify_audit()[1] == []
        assert len(k._procs) <= 16  # (what the questions loaded back goes again)
        newest = k.spawn("host")
        kept = k.process(newest - 1)  # the newest ended ones stay as they ran
        assert kept is k.process(newest - 1) and kept.result == {"n": 299}


async def test_an_ended_process_stays_while_a_descendant_lives(tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "libos.db") as k:
        await k.register_image(AgentImage("host"))
        top = k.spawn("host")
        middle = k.fork(top)
        bottom = k.fork(middle)
        k.exit(middle, 0)
        assert k.lineage.below(top) == 1
        await churn(k, 100)
        assert k.loaded(middle) is not None  # its descendant lives: walked through to `top`
        k.exit(bottom, 0)
        assert k.lineage.below(top) == 0 and k.lineage.below(middle) == 0
        await churn(k, 100)
        assert k.loaded(middle) is None and k.loaded(bottom) is None
        assert k.process(top).alive and k.loaded(top) is not None
        assert k.process_info(bottom)["lineage"] == [middle, top]


def alive(kind: type) -> int:
    gc.collect()
    return sum(isinstance(o, kind) for o in gc.get_objects())


async def test_an_ended_process_leaves_its_capabilities_and_planner_factory(
        tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "libos.db") as k:
        await k.register_image(AgentImage("host", needs=[SHARED]))
        caps, tables = alive(Capability), alive(CapabilityTable)
        for _ in range(300):  # a top-level process and a fork of it, each with 2 capabilities
            top = k.spawn("host", caps=[SHARED], children=lambda image, pid: None)
            k.exit(k.fork(top), 0)
            k.exit(top, 0)
        # At most the 16 processes the table holds, not the 600 that ran (1,200 capabilities).
        assert alive(Capability) - caps <= 2 * 16 and alive(CapabilityTable) - tables <= 16
        assert len(k.caps.owners()) <= 16 and len(k.spawner._child_planners) <= 16


async def test_an_ended_process_asked_about_later_has_its_capabilities_back(
        tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "libos.db") as k:
        await k.register_image(AgentImage("host", needs=[SHARED]))
        top = k.spawn("host", caps=[SHARED])
        child = k.fork(top)
        k.exit(child, 0)
        held = k.capabilities(child)
        await churn(k, 100)
        assert k.loaded(child) is None and child not in k.caps.owners()
        assert k.capabilities(child) == held  # from the store, handles and parents as they were
        assert len(k.caps.owners()) <= 16  # (and gone again at the next sweep)
    async with Kernel.open(tmp_path / "libos.db") as k:  # after a restart too
        assert k.capabilities(child) == held


async def test_a_revocation_reaches_a_live_descendant_through_released_ancestors(
        tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "libos.db") as k:
        await k.register_image(AgentImage("host", needs=[SHARED]))
        top = k.spawn("host", caps=[SHARED])
        middle = k.fork(top)
        bottom = k.fork(middle)
        k.exit(middle, 0)
        k.exit(top, 0)
        [root] = [c["id"] for c in k.capabilities(top) if c["scope"] == "/w"]
    async with Kernel.open(tmp_path / "libos.db") as k:  # ended ancestors: only their caps
        await churn(k, 100)
        assert {top, middle} <= set(k.caps.owners())  # (their caps: bottom's derive from them)
        gone = k.revoke(root)
        assert [c.owner for c in gone] == [top, middle, bottom]
        assert [c["scope"] for c in k.capabilities(bottom)] == ["proc/3"]
        k.exit(bottom, 0)
        await churn(k, 100)
        assert not {top, middle, bottom} & set(k.caps.owners())


@pytest.mark.parametrize("short", [1, 2])  # the sweep comes as the source, or its fork, enters
async def test_a_fork_of_a_reaped_process_as_the_table_is_swept(tmp_path: Path,
                                                                short: int) -> None:
    async with Kernel.open(tmp_path / "libos.db") as k:
        await k.register_image(AgentImage("host", needs=[SHARED]))
        source = k.spawn("host", caps=[SHARED])
        k.exit(source, 0)
        while k.loaded(source) is not None or len(k._procs) != k._sweep_at - short:
            await churn(k, 1)
        child = k.fork(source)
        [derived] = [c for c in k.capabilities(child) if c["scope"] == "/w"]
        [held] = [c for c in k.capabilities(source) if c["scope"] == "/w"]
        assert k.caps.get(derived["id"]).parent == held["id"]
        assert k.loaded(source) is not None and k.lineage.below(source) == 1
        assert [c.owner for c in k.revoke(held["id"])] == [source, child]


async def test_an_ended_process_has_its_capabilities_back_on_postgresql(
        pg_database: str, tmp_path: Path) -> None:
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs") as k:
        await k.register_image(AgentImage("host", needs=[SHARED]))
        child = k.fork(k.spawn("host", caps=[SHARED]))
        k.exit(child, 0)
        held = k.capabilities(child)
        await churn(k, 40)
        assert k.loaded(child) is None and k.capabilities(child) == held
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs") as k:
        assert k.capabilities(child) == held


async def test_questions_of_lineage_load_no_ended_process_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ended chain (each process forked from the one before, all ended) leaves the table.
    Whether one process is below another, a process's lineage, a pause's or a kill's walk of
    a tree loaded every ended process on the way back from the store in full (its image,
    tools, capabilities, checkpoint), one at a time on the broker's thread: 2,000 of them held
    it about 4 s for each `proc.signal` any process sent naming the deepest (its check asks
    whether it is a descendant before it asks for a capability). Now they read the lineage
    alone, from the table or the store's rows. The denial is still audited; the host's
    controls of the tree still work."""
    loads: list[int] = []
    reload = recovery.reload

    def counted(kernel: Kernel, pid: int) -> object:  # (the real load, counted)
        loads.append(pid)
        return reload(kernel, pid)

    monkeypatch.setattr(recovery, "reload", counted)
    async with Kernel.open(tmp_path / "libos.db") as k:
        await k.register_image(AgentImage("host"))
        await k.register_image(AgentImage("probe", tools=("signal",)))
        top = k.spawn("host")
        chain, current = [], top
        for _ in range(40):
            current = k.fork(current)
            chain.append(current)
        for pid in reversed(chain):
            k.exit(pid, 0)
        await churn(k, 60)
        assert not [p for p in chain if k.loaded(p)]
        deepest = chain[-1]
        loads.clear()
        assert k.is_descendant(top, deepest) and not k.is_descendant(deepest, top)
        assert k.process_info(deepest)["lineage"] == [*reversed(chain[:-1]), top]
        probe = k.spawn("probe", planner=ScriptedPlanner([
            CallTool("signal", {"pid": deepest, "signal": "kill"})]))
        await k.wait(probe)
        denied = [r for r in k.audit(probe) if r["syscall"] == "proc.signal"]
        assert [r["phase"] for r in denied] == ["denied"]
        k.pause(top)
        assert k.process(top).state.value == "paused"
        k.resume(top)
        k.kill(top)
        assert k.process(top).state.value == "killed"
        assert set(loads) <= {deepest}  # (`process_info` of it: the one asked about)
        assert k.verify_audit()[1] == []


async def test_an_ended_process_whose_result_the_store_keeps_only_summarized_stays(
        tmp_path: Path) -> None:
    """The store keeps an ended process's result summarized (a bounded picture). Once it had
    left the table, a `wait` for it (the host's, or a parent's `proc.wait`) answered with
    that summary: a result of 5 KB came back as 413 characters, lists cut, silently, because
    other processes (anyone's) had ended meanwhile. A process whose result the store cannot
    give back whole stays in the table; the others still go."""
    async with Kernel.open(tmp_path / "libos.db") as k:
        await k.register_image(AgentImage("host"))
        parent = k.spawn("host")
        child = k.fork(parent)
        whole = {"report": "x" * 5000, "items": list(range(100))}
        k.exit(child, 0, whole)
        await churn(k, 60)
        assert (await k.wait(child))["result"] == whole
        assert k.loaded(child) is not None and len(k._procs) <= 16


async def test_a_lineage_that_loops_in_the_store_is_a_typed_error(tmp_path: Path) -> None:
    """The store's rows are what anyone who writes the database made them: a parent made
    younger than its child (a loop) kept a walk up or down the lineage of processes no
    longer in the table going for ever, on the broker's thread. A parent is always older:
    anything else is `Conflict`, and the walks end."""
    async with Kernel.open(tmp_path / "libos.db") as k:
        await k.register_image(AgentImage("host"))
        top = k.spawn("host")
        middle = k.fork(top)
        bottom = k.fork(middle)
        for pid in (bottom, middle, top):
            k.exit(pid, 0)
        await churn(k, 60)
        with k.store.transaction() as db:
            db.execute("UPDATE processes SET parent=? WHERE pid=?", (bottom, top))
        with pytest.raises(Conflict, match="loops"):
            k.is_descendant(999_999, bottom)
        with pytest.raises(Conflict, match="loops"):
            k.process_info(middle)
        assert k.descendants(middle) == [bottom]
        assert k.is_descendant(middle, bottom)
