"""TS runtime attack (fix/tsreg, /work/wt/redts), report only.

Run:  cd /work/wt/redts && PYTHONPATH=/work/wt/redts /work/wt/redsand/.venv/bin/python \
          /work/wt/redsand/redteam_ts/attack_ts_timers.py

Deno's timers are now read lazily, through the getters kept at start, when a call first sets
a timer. Probes: (1) a timer a call sets is still cleared when the call ends, even when that
call is the one that first read the timers; (2) a tool cannot reach an unfrozen timer
function or replace the global wrappers; (3) a timer set at module top level during the
registration check (no call current) -- does it fire inside a later call?
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from broker import AgentImage, Kernel
from sandboxes.deno import DenoSandbox
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import NEEDS, agent

TOOL = """
let fired = 0;
let topFired = 0;
setTimeout(() => { topFired++; }, 30);          // set during the registration check
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
  return { fired, topFired, realFrozen: Object.isFrozen(real), replaced };
}
"""


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with DenoSandbox(spares=1) as deno, \
                Kernel.open(Path(tmp) / "k.db", sandboxes=[deno]) as k:
            await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
            pid = agent(k)
            await k.call_tool(pid, "register_tool", {"name": "t", "lang": "ts", "source": TOOL})
            print("call 1:", await k.call_tool(pid, "t", {"step": 1}))
            await trio.sleep(0.2)
            print("call 2:", await k.call_tool(pid, "t", {"step": 2}))


if __name__ == "__main__":
    trio.run(main)
