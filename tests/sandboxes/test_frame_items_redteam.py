"""Red team (sandbox surface): a frame's containers and values are counted.

Every byte of a frame's body can be an empty map, and a TypeScript tool made 16 MiB of them
from a few shared arrays (nothing to its heap) as a syscall's arguments: the broker decoded
16 million dicts on its one thread, and with the dispatcher's look at them it was held over a
minute (a 5 s deadline's watchdog could not run: the call came back 65 s late) and 1.2 GiB.
Now a frame holds at most `Limits.max_items` containers and values in all: the runtime's
encoder refuses more, typed, before anything is sent, and the broker's decoder stops at the
bound (a frame past it is a protocol error: the sandbox is killed).
"""

from __future__ import annotations

import pytest
import trio

from broker import InvalidArgument, Kernel, ProtocolError
from broker.protocol import DEFAULT_LIMITS
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import agent, audit_of, killed_since
from tests.sandboxes.test_deno import ECHO, register, tool
from tests.sandboxes.test_deno_attacks import body, hostile

__all__ = ["hostile"]  # (the fixture, imported)

DENO_SPARES = 2

# 300,000 empty maps in three shared arrays, as a syscall's arguments.
BOMB = body("""
  const maps = new Array(100000).fill({});
  try { await libos.syscall("clock.now", {a: [maps, maps, maps]}); }
  catch (e: any) { return [e.code, e.message]; }
  return "sent";""")


async def test_a_tool_cannot_send_a_frame_of_too_many_values(dk: Kernel) -> None:
    pid = agent(dk)
    code, message = await tool(dk, pid, BOMB)
    assert code == InvalidArgument.code
    assert f"more than {DEFAULT_LIMITS.max_items} containers" in message
    assert audit_of(dk, pid, "clock.now") == []  # nothing reached the broker
    # the same sandbox serves the next call
    assert await tool(dk, pid, body("return await libos.clock.now() > 0;"), name="u") is True


async def test_a_frame_of_too_many_values_kills_its_sandbox(
        hostile: tuple[Kernel, DenoSandbox]) -> None:
    kernel, sandbox = hostile
    pid, other = agent(kernel), agent(kernel)
    for name in ("echo", "forge_many_items"):
        await register(kernel, pid, name, ECHO)
    await register(kernel, other, "sys", ECHO)
    killed = sandbox.stats["killed"]
    times: list[object] = []

    async def neighbour() -> None:
        for _ in range(10):
            times.append(await kernel.call_tool(other, "sys", {}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(neighbour)
        with pytest.raises(ProtocolError, match="containers and values"):
            await kernel.call_tool(pid, "forge_many_items", {})
    assert len(times) == 10 and all(isinstance(t, float) for t in times)
    await killed_since(sandbox, killed)
    assert audit_of(kernel, pid, "clock.now") == []
    ends = [r for r in kernel.audit(pid) if r["syscall"] == "tool.call"
            and r["resource"] == "forge_many_items" and "ok" in r["detail"]]
    assert [(r["detail"]["ok"], r["detail"].get("error")) for r in ends] == [
        (False, "PROTOCOL_ERROR")]
    assert await kernel.call_tool(pid, "echo", {"a": 1}) == {"a": 1}
