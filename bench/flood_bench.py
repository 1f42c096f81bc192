"""Floods from one hostile TypeScript tool call, with the default limits, beside a neighbour
process whose syscalls are timed (issue 19 items 5 and 7, issue 20 items 3 and 6).

Run with `python -m bench.flood_bench` (prints JSON); `run()` returns the figures as a dict.

- `idle`: the neighbour's latency with nothing else running (the baseline of the same run);
- `empty_lines`: a tool logging empty lines for ever: lines stored, seconds until it ends with
  `LimitExceeded`, transactions saved, and the neighbour's p50/p99/max meanwhile;
- `refused`: 20,000 refused syscalls (unknown names, bad arguments, denials) under
  `max_syscalls=10`: how it ends, audit records written;
- `fan_out`: `Promise.all` over 24 `tool.call`s of a 300 ms tool: peak sandboxed calls held by
  the process, peak live Deno processes, seconds;
- `shell_fan_out`: `Promise.all` over 100 `shell.run(["sleep", "0.2"])`: peak concurrent
  children, the broker's peak RSS growth, seconds.

The neighbour calls the builtin `now` (one audited `clock.now`) every 5 ms; its latency is
counted from when the call was due, so time spent waiting for the broker's thread counts.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from broker import AgentImage, Kernel, LibosError, ProcessLimits
from sandboxes.deno import DenoSandbox

TOOLS = ("register_tool", "now")
NEEDS = ("tool:*:register,call", "clock:*:read", "fs:/data/**:read", "shell:sleep *:run")

EMPTY_LINES = """export default async function run(a: any, libos: any) {
  for (let i = 0; i < 100_000_000; i++) console.log(""); return "never"; }"""
REFUSED = """export default async function run(a: any, libos: any) {
  let n = 0;
  for (let i = 0; i < 20000; i++) {
    const [name, args] = [["no.such", {}], ["clock.now", {bad: 1}],
                          ["fs.read", {path: "/etc/passwd"}]][i % 3];
    try { await libos.syscall(name, args); } catch (e) { n++; }
  }
  return n; }"""
LEAF = """export default async function run(a: any, libos: any) {
  await new Promise((r) => setTimeout(r, 300)); return 1; }"""
FAN = """export default async function run(a: any, libos: any) {
  return (await Promise.allSettled(Array.from({length: 24},
                                              () => libos.tool.call("leaf", {})))).length; }"""
SHELL_FAN = """export default async function run(a: any, libos: any) {
  const runs = Array.from({length: 100}, () => libos.shell.run(["sleep", "0.2"]));
  return (await Promise.allSettled(runs)).length; }"""


def _children(match: Callable[[list[bytes]], bool]) -> int:
    me, count = os.getpid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z" and match(argv):
            count += 1
    return count


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    if not samples:
        return {}
    return {"n": len(samples), "p50_ms": samples[len(samples) // 2] * 1e3,
            "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e3,
            "max_ms": samples[-1] * 1e3}


async def _beside(kernel: Kernel, neighbour: int, work: Callable[[], Awaitable[Any]],
                  sample: Callable[[], None] | None = None) -> tuple[Any, float, list[float]]:
    """Run `work` while the neighbour calls `now` every 5 ms; (outcome, seconds, latencies)."""
    done = trio.Event()
    latencies: list[float] = []

    async def probe() -> None:
        due = trio.current_time()
        while not done.is_set():
            await kernel.call_tool(neighbour, "now", {})
            now = trio.current_time()
            latencies.append(now - due)
            if sample is not None:
                sample()
            due = now + 0.005
            await trio.sleep_until(due)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        start = time.perf_counter()
        try:
            outcome: Any = await work()
        except LibosError as exc:
            outcome = f"{type(exc).__name__}: {exc.message}"
        took = time.perf_counter() - start
        done.set()
    return outcome, took, latencies


async def _run(tmp: Path) -> dict[str, Any]:
    (tmp / "k-fs" / "data").mkdir(parents=True)
    limits = ProcessLimits()
    figures: dict[str, Any] = {"limits": {
        "sandboxes": limits.sandboxes, "broker_sandboxes": limits.broker_sandboxes,
        "shell": limits.shell, "fetch": limits.fetch, "log_line_bytes": limits.log_line_bytes}}
    async with DenoSandbox(spares=1) as deno, \
            Kernel.open(tmp / "k.db", sandboxes=[deno], process_limits=limits) as kernel:
        await kernel.register_image(AgentImage("bench", tools=TOOLS, needs=NEEDS))
        caps = list(NEEDS)
        neighbour = kernel.spawn("bench", caps=caps)

        async def tool(source: str, name: str = "t") -> int:
            pid = kernel.spawn("bench", caps=caps)
            await kernel.call_tool(pid, "register_tool",
                                   {"name": name, "lang": "ts", "source": source})
            return pid

        _, _, idle = await _beside(kernel, neighbour, lambda: trio.sleep(2))
        figures["idle"] = _percentiles(idle)

        pid = await tool(EMPTY_LINES)
        outcome, took, lat = await _beside(kernel, neighbour,
                                           lambda: kernel.call_tool(pid, "t", {}))
        lines = kernel.store._query("SELECT COUNT(*) AS n FROM events WHERE pid=? "
                                    "AND kind='log'", (pid,))[0]["n"]
        figures["empty_lines"] = {"outcome": outcome, "seconds": took, "lines_stored": lines,
                                  "neighbour": _percentiles(lat)}

        pid = await tool(REFUSED)
        before = len(kernel.audit(pid))
        outcome, took, lat = await _beside(kernel, neighbour,
                                           lambda: kernel.call_tool(pid, "t", {}))
        figures["refused"] = {"outcome": outcome, "seconds": took,
                              "audit_records": len(kernel.audit(pid)) - before,
                              "max_syscalls": kernel.call_limits.max_syscalls,
                              "neighbour": _percentiles(lat)}

        pid = await tool(LEAF, "leaf")
        await kernel.call_tool(pid, "register_tool", {"name": "fan", "lang": "ts",
                                                      "source": FAN})
        peaks = {"held": 0, "deno": 0}

        def sample_fan() -> None:
            peaks["held"] = max(peaks["held"], kernel.bounds.sandboxes.held(pid))
            peaks["deno"] = max(peaks["deno"], _children(lambda a: a[0].endswith(b"deno")))

        outcome, took, lat = await _beside(kernel, neighbour,
                                           lambda: kernel.call_tool(pid, "fan", {}),
                                           sample_fan)
        figures["fan_out"] = {"outcome": outcome, "seconds": took,
                              "peak_sandboxed_calls": peaks["held"],
                              "peak_live_deno": peaks["deno"], "neighbour": _percentiles(lat)}

        pid = await tool(SHELL_FAN)
        shell = {"children": 0, "rss": _rss_mib()}
        start_rss = shell["rss"]

        def sample_shell() -> None:
            shell["children"] = max(shell["children"], _children(
                lambda a: a[0].endswith(b"sleep") and a[1:2] == [b"0.2"]))
            shell["rss"] = max(shell["rss"], _rss_mib())

        outcome, took, lat = await _beside(kernel, neighbour,
                                           lambda: kernel.call_tool(pid, "t", {}),
                                           sample_shell)
        figures["shell_fan_out"] = {"outcome": outcome, "seconds": took,
                                    "peak_children": shell["children"],
                                    "rss_growth_mib": shell["rss"] - start_rss,
                                    "neighbour": _percentiles(lat)}
    return figures


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return trio.run(_run, Path(tmp))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
