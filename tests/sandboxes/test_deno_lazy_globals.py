"""Attacks on what the TypeScript runtime reads lazily or after lockdown (Deno's timers, read
when a call first sets one; the private MessageChannel a registration check's event-loop turn
uses): a tool can neither hook them for a later check or call in its sandbox, nor keep a timer
alive past its call."""

from __future__ import annotations

from pathlib import Path

import trio

from broker import AgentImage, Kernel
from sandboxes.deno import DenoSandbox
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import NEEDS, agent

TIMERS = """
let fired = 0;
export default async function run(args: { step: number }) {
  if (args.step === 1) {
    setTimeout(() => { fired++; }, 20);         // the first timer a call sets
    setInterval(() => { fired++; }, 5);
    return "set";
  }
  const d = Object.getOwnPropertyDescriptor(globalThis, "clearTimeout")!;
  const real = d.get ? d.get.call(globalThis) : d.value;
  let replaced = false;
  try { (globalThis as any).setTimeout = () => 0; replaced = true; } catch { /* read-only */ }
  return { fired, realFrozen: Object.isFrozen(real), replaced };
}
"""

# Hooks MessagePort.prototype.postMessage (reached without reading globalThis.MessagePort)
# so that a later check in this sandbox would never get its event-loop turn.
PORT_HOOK = """
const proto = Object.getPrototypeOf(new MessageChannel().port1);
let replaced = false;
const original = proto.postMessage;
try {
  proto.postMessage = function () { /* never deliver */ };
  replaced = proto.postMessage !== original;
} catch { /* frozen */ }
export default function run() { return { frozen: Object.isFrozen(proto), replaced }; }
"""


async def test_a_tools_timers_end_with_its_call_and_cannot_be_replaced(tmp_path: Path) -> None:
    async with DenoSandbox(spares=1) as deno, \
            Kernel.open(tmp_path / "k.db", sandboxes=[deno]) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        pid = agent(k)
        await k.call_tool(pid, "register_tool", {"name": "t", "lang": "ts", "source": TIMERS})
        assert await k.call_tool(pid, "t", {"step": 1}) == "set"
        await trio.sleep(0.2)
        assert await k.call_tool(pid, "t", {"step": 2}) == {
            "fired": 0, "realFrozen": True, "replaced": False}


async def test_a_tool_cannot_hook_the_port_a_later_check_uses(tmp_path: Path) -> None:
    async with DenoSandbox(spares=1, check_timeout=3.0) as deno, \
            Kernel.open(tmp_path / "k.db", sandboxes=[deno]) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        pid = agent(k)
        await k.call_tool(pid, "register_tool", {"name": "a", "lang": "ts",
                                                  "source": PORT_HOOK})
        assert await k.call_tool(pid, "a", {}) == {"frozen": True, "replaced": False}
        with trio.fail_after(2.5):  # a hooked port would hold the check to its 3 s deadline
            await k.call_tool(pid, "register_tool", {
                "name": "b", "lang": "ts",
                "source": "export default function run() { return 'b'; }\n"})
            assert await k.call_tool(pid, "b", {}) == "b"
