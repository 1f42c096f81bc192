"""Red team (sandbox surface): a registration's check holds a live-sandbox slot.

A process's run-time tool is checked in the sandbox that will run its first call, a sandbox
bound to that call's authority (a manifest makes a new one). One TypeScript tool fired 60
`tool.register`s at once, each with a manifest of its own and a module whose top level waits:
62 Deno processes lived at once, against a broker bound of 32 live sandboxes (up to the 1,000
syscalls a sandbox may leave pending: a host's memory). Now each check holds a sandbox slot of
its process and of the broker, one level below its caller's as a nested call would, and waits
for one until its caller's deadline.
"""

from __future__ import annotations

from pathlib import Path

from broker import CallLimits, ProcessLimits
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import LIMITS, agent
from tests.sandboxes.test_deno import register
from tests.sandboxes.test_deno_attacks import body
from tests.sandboxes.test_floods import open_kernel, peaks

TOOLS = 24

# Registers TOOLS tools at once, each narrowed to a path of its own (an authority of its own)
# and each waiting at its top level, so that the checks overlap.
REGISTER_FAN = body(f"""
  const all = [];
  for (let i = 0; i < {TOOLS}; i++) {{
    all.push(libos.syscall("tool.register", {{name: "r" + i, lang: "ts",
      source: "await new Promise((r) => setTimeout(r, 1000));\\n" +
              "export default function run() {{ return " + i + "; }}",
      manifest: ["fs:/data/m" + i + ":read"]}}).then(() => "ok", (e: any) => e.code));
  }}
  return await Promise.all(all);""")


async def test_registration_checks_hold_sandbox_slots(tmp_path: Path) -> None:
    limits = CallLimits(deadline=120.0, max_syscalls=1000, memory_mb=LIMITS.memory_mb)
    bounds = ProcessLimits(sandboxes=10)
    async with DenoSandbox(spares=1, max_idle=2, memory_mb=LIMITS.memory_mb) as deno, \
            open_kernel(tmp_path, deno, limits, process_limits=bounds) as k:
        pid = agent(k)
        await register(k, pid, "fan", REGISTER_FAN)
        async with peaks(k, [pid]) as seen:
            assert await k.call_tool(pid, "fan", {}) == ["ok"] * TOOLS
        pool = deno.max_idle + deno.spares + 1  # idle, spares, the registration checker
        assert seen[str(pid)] <= bounds.sandboxes
        assert seen["deno"] <= bounds.sandboxes + pool, seen
        done = [r for r in k.audit(pid) if r["syscall"] == "tool.register"
                and r["phase"] in ("outcome", "intent+outcome") and r["tool"] == "fan"]
        assert len(done) == TOOLS and all(r["detail"]["ok"] for r in done)
        # the tools registered so run
        assert await k.call_tool(pid, "r7", {}) == 7
