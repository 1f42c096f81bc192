"""One message no tool of its receiver can be sent must not stop the mailbox (lane mailhead).

Since lane heldbits, a receive whose message cannot be sent to the tool (past its sandbox's
bound: `Sandbox.unsendable`) put the message back, first in line, and failed typed; so a
sender that sent one such message first had every later receive of the receiver's tools fail
the same way, the messages behind it never delivered: a denial of the whole mailbox by one
message. Who gains: any tool code holding `proc:<pid>:message` on the receiver. Here a
TypeScript tool (Deno's frame holds 16 MiB) sends a 5 MiB message, past a WASM tool's 4 MiB
bound, then a small one. Now the refused message is set aside: kept where it was (nothing
acknowledged is lost), named by the refused receive's record (`set_aside`) and shown to the
host (`Kernel.messages_set_aside`), the tool told once by the typed error; the tool's next
receive is handed the message behind it, and the planner's receive (in the broker) still
takes the one set aside. Real Deno and Wasmtime over real SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel
from broker.errors import InvalidArgument
from sandboxes.deno import DenoSandbox
from sandboxes.wasm import WasmSandbox
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import SLOW_OK, deno  # noqa: F401
from tests.sandboxes.test_wasm import CAPS, NEEDS, register, syscall_tool

RECEIVE = syscall_tool("proc.receive", "(call $mp_map (i32.const 0))")
FLOOD = {"name": "flood", "lang": "ts", "schema": {"type": "object"}, "source": """
export default async function run(args: any, libos: any) {
  await libos.proc.send(args.pid, {big: "x".repeat(5 << 20)});
  await libos.proc.send(args.pid, {small: "first behind it"});
  return "sent";
}"""}
SENDER_CAPS = ["tool:ts:register", "proc:*:message"]


def _receives(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [r["detail"] for r in kernel.audit(pid)
            if r["syscall"] == "proc.receive" and "ok" in r["detail"]]


@asynccontextmanager
async def flooded(tmp_path: Path, deno: DenoSandbox,  # noqa: F811
                  take: str) -> AsyncIterator[tuple[Kernel, int, int]]:
    """A kernel whose victim (a WASM tool `take` of source `take`) has the sender's 5 MiB
    message first in its mailbox, a small one behind it: (kernel, victim's pid, sender's)."""
    (tmp_path / "fs").mkdir()
    async with Kernel.open(tmp_path / "libos.db", fs_root=tmp_path / "fs",
                           sandboxes=[deno, WasmSandbox(tmp_path / "wasm-cache")],
                           call_limits=SLOW_OK) as kernel:
        await kernel.register_image(AgentImage("victim", tools=(*ALL_BUILTINS, "receive"),
                                               needs=NEEDS))
        await kernel.register_image(AgentImage("sender", tools=("register_tool",),
                                               needs=tuple(SENDER_CAPS)))
        victim = kernel.spawn("victim", caps=CAPS)
        sender = kernel.spawn("sender", caps=SENDER_CAPS)
        await register(kernel, victim, "take", take)
        await kernel.call_tool(sender, "register_tool", FLOOD)
        assert await kernel.call_tool(sender, "flood", {"pid": victim}) == "sent"
        yield kernel, victim, sender


async def test_a_message_no_tool_can_be_sent_is_set_aside_and_the_next_delivered(
        tmp_path: Path, deno: DenoSandbox) -> None:  # noqa: F811
    async with flooded(tmp_path, deno, RECEIVE) as (kernel, victim, sender):
        # The attack: the big one first in line. The tool is told once, typed.
        with pytest.raises(InvalidArgument, match="cannot be sent to a tool") as told:
            await kernel.call_tool(victim, "take", {})
        [refused] = _receives(kernel, victim)
        assert (refused["ok"], refused["error"]) == (False, "INVALID_ARGUMENT")
        # Its next receive is handed the message behind it (it was refused it for ever).
        got = await kernel.call_tool(victim, "take", {})
        assert got["body"] == {"small": "first behind it"}
        # The big one is not lost: kept, shown to the host with the record that set it aside.
        [aside] = kernel.messages_set_aside(victim)
        assert aside["body"] == {"big": "x" * (5 << 20)} and aside["from"] == sender
        assert (refused["set_aside"], refused["intent"]) == (aside["id"], aside["set_aside_by"])
        assert f"set aside, kept as message {aside['id']}" in told.value.message
        assert kernel.store.mailbox_size(victim) == 1
        # The neighbour: later messages reach the tool as ever; the planner's receive (in the
        # broker: no sandbox's bound) takes the one set aside, whole.
        kernel.send_message(None, victim, {"later": 1})
        assert (await kernel.call_tool(victim, "take", {}))["body"] == {"later": 1}
        planner = await kernel.call_tool(victim, "receive", {"timeout": 1})
        assert planner["id"] == aside["id"] and len(planner["body"]["big"]) == 5 << 20
        assert kernel.messages_set_aside(victim) == [] and kernel.store.mailbox_size(victim) == 0
        assert [o["ok"] for o in _receives(kernel, victim)] == [False, True, True, True]
        assert kernel.verify_audit()[1] == []
