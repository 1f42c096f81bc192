"""tool and clock primitives."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from broker import FakeClock, InvalidArgument, Kernel, NotCapable, NotFound
from tests.conftest import open_image


async def test_tool_list_and_schema_validation_before_the_tool_runs(kernel: Kernel) -> None:
    await open_image(kernel, tools=("read_file", "list_tools"))
    pid = kernel.spawn("agent", caps=["fs:/**:read"])
    names = [t["name"] for t in await kernel.call_tool(pid, "list_tools", {})]
    assert names == ["list_tools", "read_file"]
    before = len(kernel.audit(pid))
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "read_file", {"path": 5})
    # The tool never ran: no fs.read was attempted.
    assert not [r for r in kernel.audit(pid)[before:] if r["syscall"] == "fs.read"]
    with pytest.raises(NotFound):
        await kernel.call_tool(pid, "write_file", {"path": "/x", "data": ""})


async def test_registering_needs_a_sandbox_and_a_capability(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent")
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "register_tool", {"name": "t", "lang": "ts",
                                                      "source": "export default () => 1"})
    granted = kernel.spawn("agent", caps=["tool:*:register"])
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(granted, "register_tool", {"name": "t", "lang": "cobol",
                                                          "source": "x"})


async def test_clock_through_a_fake_provider(db_path: object) -> None:
    clock = FakeClock(start=1000.0)
    async with Kernel.open(db_path, clock=clock) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["clock:*:read,sleep"])
        assert await kernel.call_tool(pid, "now", {}) == 1000.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kernel.call_tool, pid, "sleep", {"seconds": 60})
            await trio.testing.wait_all_tasks_blocked()
            clock.advance(59)
            await trio.testing.wait_all_tasks_blocked()
            assert nursery.child_tasks  # still asleep at 59 s
            clock.advance(1)
        assert await kernel.call_tool(pid, "now", {}) == 1060.0
        no_clock = kernel.spawn("agent")
        with pytest.raises(NotCapable):
            await kernel.call_tool(no_clock, "now", {})
