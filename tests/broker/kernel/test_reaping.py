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

from broker import AgentImage, Kernel
from broker.caps.capability import Capability
from broker.caps.table import CapabilityTable
from broker.kernel import reaping

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
