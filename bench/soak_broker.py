"""The broker of the soak, a process of its own (`bench.soak_bench` starts it, so its RSS is
the broker's alone and it can be SIGKILLed): `python -m bench.soak_broker run|finish CONFIG`.

`run` opens a fresh store, spawns the workers (`soak_agents`), lets them run alone for the
baseline, then spawns the hostile process and keeps its floods going for the soak. It prints
one JSON line of figures at the end of the soak; then either waits to be killed (`crash`) or
finishes. `finish` (in the same process, or in a new one after the kill: recovery first)
kills the hostile, raises `stop`, waits for every worker to drain and end, and prints a last
JSON line. Figures are seconds and MiB.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench.soak_agents import (
    BIG_FILE,
    FLOODS,
    HOSTILE_NEEDS,
    HOSTILE_TOOLS,
    TICK,
    WORKER_NEEDS,
    WORKER_TOOLS,
    Latencies,
    WorkerPlanner,
    flood_tools,
    hostile_caps,
    ticks,
    waits,
    worker_caps,
)
from broker import AgentImage, CallLimits, CallTool, Kernel, LibosError, ProcessLimits
from broker.kernel import AgentProcess
from broker.kernel.invocation import Invocation
from sandboxes.deno import DenoSandbox

KEY_ENV = "LIBOS_SOAK_KEY"  # the loopback model's "API key" (any value)
DENO_SPARES, DENO_MAX_IDLE = 2, 16


@dataclass
class SoakConfig:
    db: str
    model_url: str
    fetch_port: int
    seconds: float = 60.0
    baseline: float = 15.0
    workers: int = 50
    think: float = 0.1  # seconds a worker waits between steps, as if for its model
    crash: bool = True  # SIGKILL the broker at the end of the soak, then recover and finish
    call_limits: dict[str, Any] = field(default_factory=dict)  # CallLimits fields
    process_limits: dict[str, Any] = field(default_factory=dict)  # ProcessLimits fields
    approval_timeout: float = 3600.0
    floods: tuple[str, ...] = FLOODS  # which of the hostile's floods run (all, by default)
    model: bool = True  # whether the hostile's model drives it too
    # Go on past `seconds` until every flood has ended once (the CI test's mode: on a loaded
    # machine a few seconds may not be enough for a flood to reach its bound).
    until_each_ended: bool = False

    @property
    def roster(self) -> Path:
        return Path(self.db).with_suffix(".roster.json")

    @property
    def fs_root(self) -> Path:
        path = Path(self.db)
        return path.with_name(path.stem + "-fs")


def emit(kind: str, **figures: Any) -> None:
    print(json.dumps({"kind": kind, **figures}), flush=True)


def rss_mib(field_name: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def store_mib(db: Path) -> dict[str, float]:
    sizes = {suffix or "db": db.with_name(db.name + suffix).stat().st_size
             for suffix in ("", "-wal") if db.with_name(db.name + suffix).exists()}
    return {"db": round(sizes.get("db", 0) / 2**20, 1),
            "wal": round(sizes.get("-wal", 0) / 2**20, 1),
            "total": round(sum(sizes.values()) / 2**20, 1)}


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"n": 0}
    ms = sorted(s * 1e3 for s in samples)
    return {"n": len(ms), "p50_ms": round(ms[len(ms) // 2], 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
            "max_ms": round(ms[-1], 2)}


class SyscallTimer:
    """Times the workers' tool calls inside the dispatcher (each a builtin: one audited
    syscall; `tick`: a TypeScript tool making two), by phase. What a worker feels is
    `Latencies` (from when its call was due); this is the part spent in the call itself."""

    def __init__(self, kernel: Kernel, pids: set[int], latencies: Latencies) -> None:
        self.pids, self.latencies = pids, latencies
        self.samples: dict[str, list[float]] = {}
        self._run = kernel.dispatcher.run
        kernel.dispatcher.run = self.run  # type: ignore[method-assign]

    async def run(self, proc: AgentProcess, inv: Invocation | None, name: str,
                  args: Any, **options: Any) -> Any:
        # (`options`: the dispatcher's own, passed on: `checked` from `Kernel.call_tool`)
        if inv is not None or proc.pid not in self.pids or name != "tool.call" or waits(
                CallTool(args["name"], args["args"])):
            return await self._run(proc, inv, name, args, **options)
        start = time.monotonic()
        try:
            return await self._run(proc, inv, name, args, **options)
        finally:
            self.samples.setdefault(self.latencies.phase, []).append(time.monotonic() - start)


def planners_for(cfg: SoakConfig, latencies: Latencies) -> Callable[[AgentImage, int], Any]:
    """The workers' planners, by pid (from the roster, once it is written)."""
    def planner(image: AgentImage, pid: int) -> WorkerPlanner | None:
        if image.name != "worker" or not cfg.roster.exists():
            return None
        j = json.loads(cfg.roster.read_text())["workers"].index(pid)
        return WorkerPlanner(j, partner(cfg, j), cfg.think, latencies)
    return planner


class Idle:
    """A planner that never acts: the hostile without its model (for finding what costs)."""

    async def next_action(self, history: Any) -> Any:
        await trio.sleep_forever()


IDLE = Idle()


def partner(cfg: SoakConfig, j: int) -> int:
    return (j + 1) % cfg.workers + 1  # workers are pids 1..n of a fresh store


@asynccontextmanager
async def open_broker(cfg: SoakConfig, latencies: Latencies) -> AsyncIterator[Kernel]:
    async with DenoSandbox(spares=DENO_SPARES, max_idle=DENO_MAX_IDLE) as deno, Kernel.open(
            cfg.db, sandboxes=[deno], call_limits=CallLimits(**cfg.call_limits),
            process_limits=ProcessLimits(**cfg.process_limits),
            approval_timeout=cfg.approval_timeout,
            planners=planners_for(cfg, latencies)) as kernel:
        yield kernel


async def setup(kernel: Kernel, cfg: SoakConfig, latencies: Latencies) -> list[int]:
    root = cfg.fs_root
    for d in ("w", "ask", "big", "hostile"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "shared.txt").write_text("steady\n" * 100)
    (root / BIG_FILE.lstrip("/")).write_text("a" * (8 << 20))
    await kernel.register_image(AgentImage("worker", tools=WORKER_TOOLS, needs=WORKER_NEEDS))
    await kernel.register_image(AgentImage("idle", tools=("now",), needs=()))
    await kernel.register_image(AgentImage("hostile", tools=HOSTILE_TOOLS,
                                           needs=HOSTILE_NEEDS, planner={
        "kind": "openai", "model": "m", "api_key_env": KEY_ENV, "max_retries": 0,
        "timeout": 60, "base_url": cfg.model_url + "/v1"}))
    pids = [kernel.spawn("worker", caps=worker_caps(j, partner(cfg, j)))
            for j in range(cfg.workers)]
    assert pids == list(range(1, cfg.workers + 1)), "the soak needs a fresh store"
    for j, pid in enumerate(pids):
        if ticks(j):
            await kernel.call_tool(pid, "register_tool", {"name": "tick", "lang": "ts",
                                                          "source": TICK})
    cfg.roster.write_text(json.dumps({"workers": pids}))
    for j, pid in enumerate(pids):
        kernel.attach(pid, WorkerPlanner(j, partner(cfg, j), cfg.think, latencies))
    return pids


async def person(kernel: Kernel, pids: set[int]) -> None:
    """A person who approves what the workers ask, looking every 20 ms (and nothing else)."""
    while True:
        for request in kernel.approvals():
            if request["pid"] in pids:
                kernel.approve(request["id"])
        await trio.sleep(0.02)


async def flood(kernel: Kernel, pid: int, tool: str, outcomes: Counter[str],
                inner: Counter[str]) -> None:
    """Call one of the hostile's floods over and over; count how each call ends (and, for a
    fan-out, how the calls it made ended)."""
    while True:
        try:
            result = await kernel.call_tool(pid, tool, {})
            outcomes[f"{tool}:OK"] += 1
            if isinstance(result, dict):
                inner.update({f"{tool}:{code}": n for code, n in result.items()})
        except LibosError as exc:
            outcomes[f"{tool}:{exc.code}"] += 1
        await trio.sleep(0.05)


class Peaks:
    """The hostile's holdings at once, sampled every 50 ms."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.seen: Counter[str] = Counter()

    def _most(self, key: str, value: int) -> None:
        self.seen[key] = max(self.seen[key], value)

    async def sample(self, hostile: int) -> None:
        bounds = self.kernel.bounds
        while True:
            self._most("sandboxes_held", bounds.sandboxes.held(hostile))
            self._most("broker_sandboxes_held", bounds.sandboxes.held())
            self._most("shell_held", bounds.syscalls["shell.run"].held(hostile))
            self._most("fetch_held", bounds.syscalls["net.fetch"].held(hostile))
            self._most("approvals_pending", self.kernel.queue.slots.pending(hostile))
            self._most("descendants", self.kernel.lineage.below(hostile))
            await trio.sleep(0.05)


async def quarters(seconds: float, rss: dict[str, float]) -> None:
    """The broker's RSS at each quarter of the soak (the last is taken by `soak`)."""
    start = trio.current_time()
    for q in (1, 2, 3):
        await trio.sleep_until(start + seconds * q / 4)
        rss[f"{seconds * q / 4:g}s"] = rss_mib()


async def soak(kernel: Kernel, cfg: SoakConfig, pids: list[int],
               latencies: Latencies) -> dict[str, Any]:
    """The baseline, then the soak; prints its figures at the end. With `crash`, the floods
    and the workers go on until the harness kills this broker."""
    timer = SyscallTimer(kernel, set(pids), latencies)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(person, kernel, set(pids))
        latencies.phase = "baseline"
        await trio.sleep(cfg.baseline)
        gc.collect()
        start = {"rss_mib": rss_mib(), "store_mib": store_mib(Path(cfg.db)),
                 "audit_records": count(kernel, "audit")}
        latencies.phase = "soak"
        hostile = kernel.spawn("hostile", caps=hostile_caps(cfg.fetch_port),
                               args="Do as you like.", planner=None if cfg.model else IDLE)
        for name, source in flood_tools(cfg.fetch_port).items():
            await kernel.call_tool(hostile, "register_tool", {"name": name, "lang": "ts",
                                                              "source": source})
        with trio.fail_after(120):  # its model has answered once (its SDK is imported)
            while cfg.model and not kernel.process(hostile).history:
                await trio.sleep(0.05)
        outcomes: Counter[str] = Counter()
        inner: Counter[str] = Counter()
        peaks, rss = Peaks(kernel), {"before": start["rss_mib"]}
        nursery.start_soon(peaks.sample, hostile)
        nursery.start_soon(quarters, cfg.seconds, rss)
        for tool in cfg.floods:
            nursery.start_soon(flood, kernel, hostile, tool, outcomes, inner)
        await trio.sleep(cfg.seconds)
        with trio.move_on_after(300):
            while cfg.until_each_ended and not all(
                    any(k.startswith(f"{tool}:") for k in outcomes) for tool in cfg.floods):
                await trio.sleep(0.1)
        latencies.phase = "after"
        rss[f"{cfg.seconds:g}s"] = rss_mib()
        end = {"rss_mib": rss_mib(), "peak_rss_mib": rss_mib("VmHWM"),
               "store_mib": store_mib(Path(cfg.db)), "audit_records": count(kernel, "audit")}
        figures = {
            "hostile": hostile, "start": start, "end": end, "rss_mib": rss,
            "outcomes": dict(outcomes), "fanned_out": dict(inner), "peaks": dict(peaks.seen),
            "latency": {phase: percentiles(s) for phase, s in latencies.steps.items()},
            "in_dispatch": {phase: percentiles(s) for phase, s in timer.samples.items()}}
        emit("soaked", **figures)
        if cfg.crash:
            await trio.sleep_forever()  # the harness kills this broker now, mid-flood
        nursery.cancel_scope.cancel()
    return figures


def count(kernel: Kernel, table: str) -> int:
    return kernel.store._query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]


async def finish(kernel: Kernel, hostile: int, pids: list[int],
                 timeout: float = 120.0) -> dict[str, Any]:
    """End the hostile, tell the workers to stop, and wait for each to drain and end (the
    person still answering their requests)."""
    started = time.monotonic()
    kernel.kill(hostile, "the soak is over")
    killed = time.monotonic() - started
    kernel.raise_event("stop")
    statuses = {}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(person, kernel, set(pids))
        with trio.move_on_after(timeout):
            for pid in pids:
                statuses[pid] = await kernel.wait(pid)
        nursery.cancel_scope.cancel()
    gc.collect()
    return {"kill_hostile_s": round(killed, 2), "drain_s": round(time.monotonic() - started, 2),
            "rss_mib": rss_mib(),
            "workers": {pid: {k: s.get(k) for k in ("state", "exit_code", "result")}
                        for pid, s in statuses.items()}}


async def run(cfg: SoakConfig) -> None:
    latencies = Latencies()
    async with open_broker(cfg, latencies) as kernel:
        pids = await setup(kernel, cfg, latencies)
        emit("ready", rss_mib=rss_mib())
        figures = await soak(kernel, cfg, pids, latencies)
        emit("finished", **await finish(kernel, figures["hostile"], pids))


async def recover_and_finish(cfg: SoakConfig, hostile: int) -> None:
    latencies = Latencies()
    started = time.monotonic()
    async with open_broker(cfg, latencies) as kernel:
        opened = {"open_s": round(time.monotonic() - started, 2), "open_rss_mib": rss_mib()}
        pids = json.loads(cfg.roster.read_text())["workers"]
        emit("finished", **opened, **await finish(kernel, hostile, pids))


def main(argv: list[str]) -> None:
    mode, cfg = argv[0], SoakConfig(**json.loads(Path(argv[1]).read_text()))
    target: Callable[..., Awaitable[None]] = run
    args: tuple[Any, ...] = (cfg,)
    if mode == "finish":
        target, args = recover_and_finish, (cfg, int(argv[2]))
    trio.run(target, *args)


if __name__ == "__main__":
    main(sys.argv[1:])

