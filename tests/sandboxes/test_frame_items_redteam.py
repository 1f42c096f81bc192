"""Red team (sandbox surface): a frame's containers and values are counted.

Every byte of a frame's body can be an empty map, and a TypeScript tool made 16 MiB of them
from a few shared arrays (nothing to its heap) as a syscall's arguments: the broker decoded
16 million dicts on its one thread, and with the dispatcher's look at them it was held over a
minute (a 5 s deadline's watchdog could not run: the call came back 65 s late) and 1.2 GiB.
Now a frame holds at most `Limits.max_items` containers and values in all: the runtime's
encoder refuses more, typed, before anything is sent, and the broker's decoder stops at the
bound (a frame past it is a protocol error: the sandbox is killed). A WASM tool's result is
decoded under the same bound (its calls run on the broker's thread when short).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import InvalidArgument, Kernel, ProtocolError
from broker.protocol import DEFAULT_LIMITS
from sandboxes.deno import DenoSandbox
from sandboxes.wasm import WasmSandbox
from tests.sandboxes.conftest import agent, audit_of, killed_since
from tests.sandboxes.test_deno import ECHO, register, tool
from tests.sandboxes.test_deno_attacks import body, hostile, refused_beside_a_neighbour
from tests.sandboxes.test_wasm import ECHO as WASM_ECHO
from tests.sandboxes.test_wasm import register as wasm_register
from tests.sandboxes.test_wasm import start

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
    pid = agent(kernel)
    for name in ("echo", "forge_many_items"):
        await register(kernel, pid, name, ECHO)
    killed = sandbox.stats["killed"]
    await refused_beside_a_neighbour(kernel, pid, "forge_many_items", ProtocolError,
                                     "containers and values")
    await killed_since(sandbox, killed)
    assert audit_of(kernel, pid, "clock.now") == []
    assert await kernel.call_tool(pid, "echo", {"a": 1}) == {"a": 1}


# A WASM tool's result envelope of 300,000 empty maps (three arrays of 100,000), written by
# memory.fill: 300 KB, decoded by the broker on its own thread for an inline call.
MAPS_RESULT = """(module
  (memory (export "memory") 5)
  (data (i32.const 0) "\\82\\a2ok\\c3\\a5value\\dc\\00\\03")
  (func (export "alloc") (param i32) (result i32) (i32.const 320000))
  (func (export "run") (param i32 i32) (result i64)
    (local $at i32) (local $i i32)
    (local.set $at (i32.const 14))
    (loop $each
      (i32.store8 (local.get $at) (i32.const 0xdd))
      (i32.store (i32.add (local.get $at) (i32.const 1)) (i32.const 0xa0860100))
      (memory.fill (i32.add (local.get $at) (i32.const 5)) (i32.const 0x80) (i32.const 100000))
      (local.set $at (i32.add (local.get $at) (i32.const 100005)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $each (i32.lt_u (local.get $i) (i32.const 3))))
    (i64.const 300029)))"""


async def test_a_wasm_result_of_too_many_values_is_a_protocol_error(
        tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "w.db", sandboxes=[WasmSandbox(tmp_path / "c")]) as k:
        pid = await start(k)
        await wasm_register(k, pid, "maps", MAPS_RESULT)
        with pytest.raises(ProtocolError, match="containers and values"):
            await k.call_tool(pid, "maps", {})
        await wasm_register(k, pid, "echo", WASM_ECHO)
        assert await k.call_tool(pid, "echo", {"a": 1}) == {"a": 1}
