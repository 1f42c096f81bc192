"""Live descendants are bounded (`ProcessLimits.descendants`), counted against every ancestor:
a `proc.spawn` past the bound is refused in its check (`LimitExceeded`, audited), children
spawning children count against the grandparent too, an ended child frees its place, and a
broker that opens the store counts the live ones again. Before the bound, one tool call of
the soak's hostile process left 10,000 live children per call (~3 KB of the broker's memory
each, 140 MiB after three calls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import AgentImage, Kernel, LimitExceeded, ProcessLimits

LIMITS = ProcessLimits(descendants=3)
NEEDS = ("proc:*:spawn", "clock:*:read")


async def images(kernel: Kernel) -> None:
    await kernel.register_image(AgentImage("parent", tools=("spawn", "now"), needs=NEEDS))


async def spawn(kernel: Kernel, pid: int) -> int:
    return await kernel.call_tool(pid, "spawn", {"image": "parent",
                                                 "caps": ["proc:parent:spawn"]})


def refusals(kernel: Kernel, pid: int) -> list[dict[str, object]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == "proc.spawn"
            and r["phase"] == "rejected"]


async def test_spawns_past_the_bound_are_refused_and_audited(tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "k.db", process_limits=LIMITS) as kernel:
        await images(kernel)
        top = kernel.spawn("parent", caps=["proc:parent:spawn", "clock:*:read"])
        children = [await spawn(kernel, top) for _ in range(3)]
        processes = len(kernel.ps())
        with pytest.raises(LimitExceeded, match=f"process {top} already has 3 live"):
            await spawn(kernel, top)
        assert len(kernel.ps()) == processes  # nothing was created
        [refused] = refusals(kernel, top)
        assert refused["detail"]["error"] == "LIMIT_EXCEEDED"
        # The process itself carries on; the host, the root of authority, is not bounded.
        assert await kernel.call_tool(top, "now", {}) > 0
        assert kernel.spawn("parent") > children[-1]
        # An ended child frees its place.
        kernel.kill(children[0])
        assert await spawn(kernel, top) > 0
        assert kernel.lineage.below(top) == 3


async def test_grandchildren_count_against_every_ancestor(tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "k.db", process_limits=LIMITS) as kernel:
        await images(kernel)
        top = kernel.spawn("parent", caps=["proc:parent:spawn"])
        child = await spawn(kernel, top)
        grandchild = await spawn(kernel, child)
        await spawn(kernel, grandchild)
        # Three live below `top`: neither it nor anyone below it may add a fourth.
        for pid in (top, child, grandchild):
            with pytest.raises(LimitExceeded, match=f"process {top}"):
                await spawn(kernel, pid)
        assert (kernel.lineage.below(top), kernel.lineage.below(child)) == (3, 2)
        kernel.kill(child)  # and everything below it
        assert kernel.lineage.below(top) == 0
        assert await spawn(kernel, top) > 0


async def test_a_new_broker_counts_the_live_ones_again(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    async with Kernel.open(db, process_limits=LIMITS) as kernel:
        await images(kernel)
        top = kernel.spawn("parent", caps=["proc:parent:spawn"])
        child = await spawn(kernel, top)
        await spawn(kernel, child)
        ended = await spawn(kernel, top)
        kernel.kill(ended)
    async with Kernel.open(db, process_limits=LIMITS) as kernel:
        assert (kernel.lineage.below(top), kernel.lineage.below(child)) == (2, 1)
        await spawn(kernel, top)
        with pytest.raises(LimitExceeded):
            await spawn(kernel, child)
        assert len(refusals(kernel, child)) == 1
