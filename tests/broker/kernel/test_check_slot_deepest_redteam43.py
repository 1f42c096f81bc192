"""Red team 43 (sandbox surface): a registration's check below the deepest tools has no room.

A run-time registration's check holds a live-sandbox slot one level below its caller's
(`Bounds.check`), as a nested call's would. The levels keep room for each depth below a
holder's, but there are `MAX_TOOL_DEPTH` of them: a tool at the deepest depth makes no nested
call, so nothing was kept below it, and its check takes the deepest level's cap, the whole
bound. A 7-deep chain (7 slots) whose last tool fans out to 5 tools at depth 7 fills a
process's 12 slots; each of the 5 then registers a tool, and every check waits for a slot
that only a finished one of them would free: none registers, each fails at its caller's
deadline (`LimitExceeded`). Before the check held a slot, they registered. A level of its
own for the check (levels = depth + 1) would take a slot from every depth's cap (a
process's top-level calls 5 to 4); left as a strict xfail, DESIGN section 9.
"""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pytest
import trio

from broker.errors import LimitExceeded
from broker.kernel.bounds import Bounds, ProcessLimits
from broker.kernel.tools import MAX_TOOL_DEPTH


@dataclass
class _Limits:
    deadline: float = 0.5


@dataclass
class _Inv:  # the fields `Bounds.sandbox` and `Bounds.check` read of an Invocation
    pid: int = 1
    depth: int = 0
    limits: _Limits = field(default_factory=_Limits)
    started: float = field(default_factory=time.monotonic)


async def _checks_of_the_deepest(bounds: Bounds, fan: int) -> list[str]:
    """A chain down to depth MAX_TOOL_DEPTH - 2 and `fan` tools below it, each registering a
    tool once all hold their slots; what each registration got."""
    got: list[str] = []
    async with AsyncExitStack() as stack:
        for depth in range(MAX_TOOL_DEPTH - 1):
            await stack.enter_async_context(bounds.sandbox(_Inv(depth=depth)))
        deepest = [_Inv(depth=MAX_TOOL_DEPTH - 1) for _ in range(fan)]
        for inv in deepest:
            await stack.enter_async_context(bounds.sandbox(inv))

        async def register(inv: _Inv) -> None:
            try:
                async with bounds.check(inv.pid, inv):
                    got.append("checked")
            except LimitExceeded:
                got.append("LimitExceeded")

        async with trio.open_nursery() as nursery:
            for inv in deepest:
                nursery.start_soon(register, inv)
    return got


@pytest.mark.xfail(strict=True, reason="the deepest tools' checks take the deepest level's "
                   "cap, which they fill: DESIGN section 9")
async def test_the_deepest_tools_registrations_are_checked() -> None:
    limits = ProcessLimits()
    bounds = Bounds(limits, tool_depth=MAX_TOOL_DEPTH, deadline=30.0)
    fan = limits.sandboxes - (MAX_TOOL_DEPTH - 1)
    assert await _checks_of_the_deepest(bounds, fan) == ["checked"] * fan


async def test_a_fan_short_of_the_bound_is_checked() -> None:
    limits = ProcessLimits()
    bounds = Bounds(limits, tool_depth=MAX_TOOL_DEPTH, deadline=30.0)
    fan = limits.sandboxes - (MAX_TOOL_DEPTH - 1) - 1
    assert await _checks_of_the_deepest(bounds, fan) == ["checked"] * fan
