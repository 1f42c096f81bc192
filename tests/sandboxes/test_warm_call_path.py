"""What a warm sandboxed call costs the kernel around its driver (issue #17): with a sandbox
slot free, the slot is taken and given back without a context manager, and a Deno call's end
is a flag, not a `trio.Event`. The slot is still held for exactly the call."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from broker import Kernel
from broker.kernel.bounds import Bounds
from broker.kernel.slots import Slots
from tests.sandboxes.conftest import agent, register_tool

# A tool that makes one syscall, during which the test looks at the slots its process holds.
NOW = ("export default async function run(a: unknown, libos: any) "
       "{ return await libos.clock.now(); }")


async def test_a_warm_call_holds_its_slot_without_a_context_manager_or_an_event(
        dk: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = agent(dk)
    await register_tool(dk, pid, "clock_tool", NOW, lang="ts")
    for _ in range(3):  # warm: the sandbox is the authority's idle one
        await dk.call_tool(pid, "clock_tool", {})

    events, slot_managers, held_in_call = [], [], []
    caller = trio.lowlevel.current_task()
    real_event, real_sandbox, real_clock = trio.Event, Bounds.sandbox, dk.clock.now

    def counted_event() -> Any:
        if trio.lowlevel.current_task() is caller:  # (the driver's watchdog has its own)
            events.append(1)
        return real_event()

    def counted_sandbox(self: Bounds, inv: Any) -> Any:
        slot_managers.append(1)
        return real_sandbox(self, inv)

    def clock_now() -> float:
        held_in_call.append(dk.bounds.sandboxes.held(pid))
        return real_clock()

    monkeypatch.setattr(trio, "Event", counted_event)
    monkeypatch.setattr(Bounds, "sandbox", counted_sandbox)
    monkeypatch.setattr(dk.clock, "now", clock_now)
    taken = []
    real_take = Slots.take_if_free
    monkeypatch.setattr(Slots, "take_if_free",
                        lambda self, *a: taken.append(1) or real_take(self, *a))
    await dk.call_tool(pid, "clock_tool", {})

    assert events == [] and slot_managers == []
    assert taken == [1] and 1 in held_in_call  # the slot was held while the tool ran
    assert dk.bounds.sandboxes.held(pid) == 0  # and given back
