"""Red team 26 (MEDIUM): the builtin `receive` tool runs in the broker, so its receive was
taken as the planner's (no sandbox's bound, past no message set aside); but a sandboxed tool
may call that builtin (`tool.call`), and the builtin's answer is then that tool's. A WASM tool
that did took the 5 MiB message (set aside as past its 4 MiB bound, or first in line): the
receive and the builtin recorded `ok`, the tool's call failed `LIMIT_EXCEEDED`, and the
message was taken, delivered to no one, gone from the mailbox (invariant 7), hidden from the
planner and the host. Now the builtin's receive is bounded by, and goes past what is set
aside for, the tool that called it. Real Deno and Wasmtime over real SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import InvalidArgument
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import SLOW_OK, deno  # noqa: F401
from tests.sandboxes.test_receive_set_aside import flooded
from tests.sandboxes.test_wasm import lib

CALL_RECEIVE = lib("""
  (data (i32.const 1024) "tool.call")
  (data (i32.const 1100) "name")
  (data (i32.const 1110) "receive")
  (data (i32.const 1120) "args")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $sys_begin (i32.const 1024) (i32.const 9))
    (call $mp_map (i32.const 2))
    (call $mp_str (i32.const 1100) (i32.const 4))
    (call $mp_str (i32.const 1110) (i32.const 7))
    (call $mp_str (i32.const 1120) (i32.const 4))
    (call $mp_map (i32.const 0))
    (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))""")


async def test_a_wasm_tool_calling_the_builtin_receive_is_bounded_as_its_own_receive(
        tmp_path: Path, deno: DenoSandbox) -> None:  # noqa: F811
    async with flooded(tmp_path, deno, CALL_RECEIVE) as (kernel, victim, _sender):
        # The big one first in line: refused, typed, and set aside (not taken and lost).
        with pytest.raises(InvalidArgument, match="set aside"):
            await kernel.call_tool(victim, "take", {})
        [aside] = kernel.messages_set_aside(victim)
        assert len(aside["body"]["big"]) == 5 << 20 and kernel.store.mailbox_size(victim) == 2
        assert not [r for r in kernel.audit(victim) if r["syscall"] == "proc.receive"
                    and r["detail"].get("ok")]
        # The tool's next call of the builtin goes on past it.
        got = await kernel.call_tool(victim, "take", {})
        assert got["body"] == {"small": "first behind it"}
        assert kernel.messages_set_aside(victim) == [aside]
        # The neighbour: the builtin called by the planner (here the host) takes it, whole.
        planner = await kernel.call_tool(victim, "receive", {"timeout": 1})
        assert planner["id"] == aside["id"] and len(planner["body"]["big"]) == 5 << 20
        assert kernel.store.mailbox_size(victim) == 0
        assert kernel.verify_audit()[1] == []
