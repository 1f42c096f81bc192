"""Approval flood benchmark: what one tool call filing 1,000 approval requests at once (real
Deno, `Promise.allSettled`) costs another process, beside a fan-out of 1,000 plain syscalls
(`clock.sleep`) from the same kind of call in the same run.

Another process reads a small file every 5 ms; its latencies are reported by phase of the
flood: `filing` (the 1,000 syscalls arrive), `waiting` (all are filed or wait for a slot:
the bound holds 16 pending), `ending` (the deadline comes and they fail). Figures in ms.

Run with `python -m bench.approval_bench` (or `python -m bench --only approval_bench`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from broker import AgentImage, CallLimits, Kernel
from broker.kernel.tools import BUILTINS
from sandboxes.deno import DenoSandbox

REQUESTS = 1000
TIMEOUT = 3.0
ASK_WRITE = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}
NEEDS = ("fs:/**:read,write", "tool:*:register,call", "clock:*:sleep")


def fan_out_source(call: str, count: int = REQUESTS) -> str:
    """A TypeScript tool making `count` syscalls at once (`call` may use the index `i`);
    it returns each one's outcome: "OK" or the error code."""
    return f"""export default async function run(a: unknown, libos: any) {{
  const got = await Promise.allSettled(Array.from({{length: {count}}}, (_, i) => {call}));
  return got.map((r: any) => r.status === "fulfilled" ? "OK" : r.reason.code);
}}"""


ASKS = fan_out_source("libos.fs.write(`/out/f${i}.txt`, 'x')")
SLEEPS = fan_out_source(f"libos.clock.sleep({TIMEOUT})")


def open_flood_kernel(root: Path, deno: DenoSandbox, timeout: float = TIMEOUT) -> Any:
    """A kernel over `root` for the flood: files under /out, a small /in.txt to read; a
    request unanswered for `timeout` seconds is denied."""
    (root / "libos-fs" / "out").mkdir(parents=True, exist_ok=True)
    (root / "libos-fs" / "in.txt").write_text("steady")
    limits = CallLimits(deadline=60.0, max_syscalls=5 * REQUESTS, memory_mb=128)
    return Kernel.open(root / "libos.db", sandboxes=[deno], call_limits=limits,
                       approval_timeout=timeout)


async def measure(kernel: Kernel, source: str, phase_of: Callable[[int], str] | None = None
                  ) -> dict[str, Any]:
    """Run the fan-out tool once while another process reads; returns the tool's outcomes
    and the reads' latencies (s) by phase (`phase_of(flooder)`, polled every 20 ms)."""
    await kernel.register_image(AgentImage("agent", tools=tuple(BUILTINS), needs=NEEDS))
    flooder = kernel.spawn("agent", caps=[ASK_WRITE, "tool:*:register,call", "clock:*:sleep"])
    steady = kernel.spawn("agent", caps=["fs:/in.txt:read"])
    await kernel.call_tool(flooder, "register_tool", {"name": "flood", "lang": "ts",
                                                      "source": source})
    outcome: dict[str, Any] = {"flooder": flooder, "latencies": [], "phase": "filing"}

    async def flood() -> None:
        started = time.perf_counter()
        outcome["codes"] = Counter(await kernel.call_tool(flooder, "flood", {}))
        outcome["seconds"] = time.perf_counter() - started
        outcome["phase"] = "done"

    async def reads() -> None:
        while outcome["phase"] != "done":
            started, phase = time.perf_counter(), outcome["phase"]
            await trio.sleep(0.005)
            await kernel.call_tool(steady, "read_file", {"path": "/in.txt"})
            outcome["latencies"].append((phase, time.perf_counter() - started - 0.005))

    async def phases() -> None:
        while phase_of is not None and outcome["phase"] != "done":
            outcome["phase"] = phase_of(flooder) or outcome["phase"]
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        nursery.start_soon(reads)
        nursery.start_soon(phases)
    return outcome


def approval_phases(kernel: Kernel) -> Callable[[int], str]:
    """The phase of an approval flood, from the queue's slots and pending requests."""
    state = {"phase": "filing"}

    def phase_of(pid: int) -> str:
        slots = kernel.queue.slots
        pending = [r for r in kernel.store.list_approvals("pending") if r["pid"] == pid]
        state["most_pending"] = max(state.get("most_pending", 0), len(pending))
        if state["phase"] == "filing" and (
                slots.pending(pid) + slots.waiting(pid) == REQUESTS):
            state["phase"] = "waiting"
        elif state["phase"] == "waiting" and pending and kernel.clock.now() >= min(
                r["deadline"] for r in pending) - 0.3:
            state["phase"] = "ending"
        return state["phase"]

    phase_of.state = state  # type: ignore[attr-defined]
    return phase_of


def summary(latencies: list[tuple[str, float]]) -> dict[str, float]:
    ms = sorted(s * 1000 for _, s in latencies)
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[int(len(ms) * 0.99)],
            "worst_ms": ms[-1], "reads": float(len(ms))}


async def _run() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, source in (("plain_sleeps", SLEEPS), ("approval_requests", ASKS)):
        with tempfile.TemporaryDirectory(prefix="libos-bench-") as tmp:
            # A kernel closes its sandboxes: one Deno service per kernel.
            async with DenoSandbox(spares=1, memory_mb=128) as deno, open_flood_kernel(
                    Path(tmp), deno) as kernel:
                phase_of = approval_phases(kernel) if source is ASKS else None
                out = await measure(kernel, source, phase_of)
                row = {"flood_s": out["seconds"], **summary(out["latencies"])}
                for phase in ("filing", "waiting", "ending"):
                    part = [x for x in out["latencies"] if x[0] == phase]
                    if phase_of is not None and part:
                        row[f"{phase}_worst_ms"] = max(s for _, s in part) * 1000
                if phase_of is not None:
                    state = phase_of.state  # type: ignore[attr-defined]
                    row["most_pending"] = float(state["most_pending"])
                    row["filed"] = float(len(kernel.approvals(state=None)))
                figures[name] = row
    return figures


def run() -> dict[str, Any]:
    return trio.run(_run)


if __name__ == "__main__":
    for key, value in run().items():
        print(key, value)
