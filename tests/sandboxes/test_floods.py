"""Floods from real TypeScript tools (issue 19 items 5 and 7, issue 20 items 3 and 6): every
attempt costs, what one call can start or write is bounded, and the call that floods ends
with `LimitExceeded` while a neighbour process keeps being served."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, CallLimits, Kernel, LimitExceeded, ProcessLimits
from broker.kernel.image import Budget
from sandboxes.deno import DenoSandbox
from tests.broker.syscalls.test_concurrency import sleeping_children
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import CAPS, LIMITS, NEEDS, agent
from tests.sandboxes.test_deno import register
from tests.sandboxes.test_deno_attacks import body, meanwhile

DENO_SPARES = 2

# 20,000 attempts that are all refused: unknown names, arguments that fail the schema, and
# reads outside every capability, one after another, each error caught.
REFUSED_FLOOD = body("""
  let refused = 0;
  for (let i = 0; i < 20000; i++) {
    const [name, args] = [["no.such", {}], ["clock.now", {bad: 1}],
                          ["fs.read", {path: "/etc/passwd"}]][i % 3];
    try { await libos.syscall(name, args); } catch (e) { refused++; }
  }
  return refused;""")


@asynccontextmanager
async def open_kernel(tmp_path: Path, deno: DenoSandbox, limits: CallLimits,
                      **options: Any) -> AsyncIterator[Kernel]:
    (tmp_path / "k-fs" / "data").mkdir(parents=True, exist_ok=True)
    async with Kernel.open(tmp_path / "k.db", sandboxes=[deno], call_limits=limits,
                           **options) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        yield k


async def test_refused_syscalls_count_against_the_call(tmp_path: Path,
                                                      deno: DenoSandbox) -> None:
    limits = CallLimits(deadline=30.0, max_syscalls=10, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits) as k:
        pid = agent(k)
        await register(k, pid, "flood", REFUSED_FLOOD)
        before = len(k.audit(pid))
        # The neighbour's calls meanwhile and after all succeed (`meanwhile` asserts each); the
        # flood of 11 refusals may end before the first of them does, so none is counted.
        outcome, _ = await meanwhile(k, lambda: k.call_tool(pid, "flood", {}))
        assert isinstance(outcome, LimitExceeded) and "10 syscalls" in outcome.message
        records = k.audit(pid)[before:]
        # tool.call intent + 10 refusals + the one that crossed the cap + tool.call outcome
        assert len(records) == 13
        refusals = records[1:-1]
        assert {r["phase"] for r in refusals[:-1]} == {"denied", "rejected"}
        assert refusals[-1]["phase"] == "rejected"
        assert refusals[-1]["detail"]["error"] == "LIMIT_EXCEEDED"
        assert records[-1]["detail"]["error"] == "LIMIT_EXCEEDED"
        # the process is not harmed beyond that call: its next call works
        assert await k.call_tool(pid, "now", {}) > 0


async def test_refused_syscalls_spend_the_process_budget(tmp_path: Path,
                                                        deno: DenoSandbox) -> None:
    limits = CallLimits(deadline=30.0, max_syscalls=10, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits) as k:
        await k.register_image(AgentImage("capped", tools=ALL_BUILTINS, needs=NEEDS,
                                          budget=Budget(syscalls=5)))
        pid = k.spawn("capped", caps=CAPS)
        # registering spends one syscall of the budget (the tool.register)
        await register(k, pid, "flood", REFUSED_FLOOD)
        before = len(k.audit(pid))
        with pytest.raises(LimitExceeded, match="syscalls budget"):
            await k.call_tool(pid, "flood", {})
        assert k.process(pid).state.value == "killed"
        records = k.audit(pid)[before:]
        assert len(records) <= 8
        assert any(r["detail"].get("error") == "LIMIT_EXCEEDED" for r in records)
        neighbour = agent(k)
        assert await k.call_tool(neighbour, "now", {}) > 0


async def test_nested_calls_share_the_callers_syscall_cap(tmp_path: Path,
                                                         deno: DenoSandbox) -> None:
    """Nesting cannot multiply the cap: 20 children each flooding still add up to one cap."""
    limits = CallLimits(deadline=30.0, max_syscalls=50, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits) as k:
        pid = agent(k)
        await register(k, pid, "flood", REFUSED_FLOOD)
        await register(k, pid, "fan", body("""
  const got = [];
  for (let i = 0; i < 20; i++) {
    try { await libos.tool.call("flood", {}); got.push("ok"); }
    catch (e) { got.push(e.code); }
  }
  return got;"""))
        before = len(k.audit(pid))
        with pytest.raises(LimitExceeded):
            await k.call_tool(pid, "fan", {})
        records = k.audit(pid)[before:]
        # every attempt anywhere in the tree counts against the top call's cap of 50
        assert len(records) <= 2 * limits.max_syscalls + 8


# -- live sandboxes --------------------------------------------------------------------------

LEAF = body("await new Promise((r) => setTimeout(r, 300)); return 'leaf';")
FAN = body("""
  const got = await Promise.allSettled(Array.from({length: 24},
                                                  () => libos.tool.call("leaf", {})));
  return got.map((r: any) => r.status === "fulfilled" ? "ok" : r.reason.code);""")


def live_deno_processes() -> int:
    """Deno processes that are children of this (the broker's) process, from /proc."""
    me, count = os.getpid(), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z" and argv0.endswith(b"deno"):
            count += 1
    return count


@asynccontextmanager
async def peaks(kernel: Kernel, pids: list[int]) -> AsyncIterator[dict[str, int]]:
    """Sample, while the block runs, the sandboxed calls each process holds, all of them,
    and the live Deno processes."""
    seen = {"deno": 0, "held": 0, **{str(pid): 0 for pid in pids}}

    async def sample() -> None:
        while True:
            seen["deno"] = max(seen["deno"], live_deno_processes())
            seen["held"] = max(seen["held"], kernel.bounds.sandboxes.held())
            for pid in pids:
                seen[str(pid)] = max(seen[str(pid)], kernel.bounds.sandboxes.held(pid))
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        yield seen
        nursery.cancel_scope.cancel()


async def test_a_fan_out_tool_gets_a_bounded_number_of_sandboxes(tmp_path: Path) -> None:
    """24 tool.calls at once from one call: with a bound of 10 per process, a fan-out at depth
    1 holds at most 4 (room is kept for deeper levels), the rest wait their turn, all finish,
    and the live Deno processes never exceed the bound plus the warm pool."""
    # (24 runs, 6 rounds of 4: the bound shows; a loaded machine took over 30 s for 60.)
    limits = CallLimits(deadline=120.0, memory_mb=LIMITS.memory_mb)
    bounds = ProcessLimits(sandboxes=10)
    async with DenoSandbox(spares=1, max_idle=2, memory_mb=LIMITS.memory_mb) as deno, \
            open_kernel(tmp_path, deno, limits, process_limits=bounds) as k:
        pid = agent(k)
        await register(k, pid, "leaf", LEAF)
        await register(k, pid, "fan", FAN)
        async with peaks(k, [pid]) as seen:
            assert await k.call_tool(pid, "fan", {}) == ["ok"] * 24
        pool = deno.max_idle + deno.spares + 1  # idle, spares, the registration checker
        assert seen[str(pid)] == 4
        assert seen["deno"] <= bounds.sandboxes + pool
        leaves = [r for r in k.audit(pid) if r["syscall"] == "tool.call"
                  and r["resource"] == "leaf"
                  and r["phase"] in ("outcome", "intent+outcome")]  # (a leaf's: whole)
        assert len(leaves) == 24 and all(r["detail"]["ok"] for r in leaves)


async def test_the_broker_bounds_every_process_together(tmp_path: Path) -> None:
    # (24 runs, 6 rounds of 4: the bound shows; a loaded machine took over 30 s for 60.)
    limits = CallLimits(deadline=120.0, memory_mb=LIMITS.memory_mb)
    bounds = ProcessLimits(sandboxes=10, broker_sandboxes=10)
    async with DenoSandbox(spares=1, max_idle=2, memory_mb=LIMITS.memory_mb) as deno, \
            open_kernel(tmp_path, deno, limits, process_limits=bounds) as k:
        pids = [agent(k), agent(k)]
        for pid in pids:
            await register(k, pid, "leaf", LEAF)
            await register(k, pid, "fan", FAN)
        results: list[Any] = []
        async with peaks(k, pids) as seen, trio.open_nursery() as nursery:
            for pid in pids:
                async def fan(pid: int = pid) -> None:
                    results.append(await k.call_tool(pid, "fan", {}))
                nursery.start_soon(fan)
        assert results == [["ok"] * 24] * 2
        assert seen["held"] == 4  # two fans and two leaves: the broker's room at depth 1
        assert seen["deno"] <= bounds.broker_sandboxes + deno.max_idle + deno.spares + 1


async def test_concurrent_calls_beyond_the_bound_wait(tmp_path: Path) -> None:
    """Host calls at depth 0 share the room left for nesting: with a bound of 8 (the tool
    depth), one runs at a time, and each of the others waits for it."""
    # (24 runs, 6 rounds of 4: the bound shows; a loaded machine took over 30 s for 60.)
    limits = CallLimits(deadline=120.0, memory_mb=LIMITS.memory_mb)
    async with DenoSandbox(spares=1, memory_mb=LIMITS.memory_mb) as deno, \
            open_kernel(tmp_path, deno, limits,
                        process_limits=ProcessLimits(sandboxes=8)) as k:
        pid = agent(k)
        await register(k, pid, "leaf", LEAF)
        done: list[Any] = []
        start = trio.current_time()
        async with peaks(k, [pid]) as seen, trio.open_nursery() as nursery:
            for _ in range(4):
                async def one() -> None:
                    done.append(await k.call_tool(pid, "leaf", {}))
                nursery.start_soon(one)
        assert len(done) == 4 and seen[str(pid)] == 1
        assert trio.current_time() - start >= 4 * 0.3


# -- blocking syscalls fanned out from one call ----------------------------------------------

async def test_a_tool_fanning_out_shell_runs_gets_the_process_bound(tmp_path: Path,
                                                                    deno: DenoSandbox) -> None:
    # (24 runs, 6 rounds of 4: the bound shows; a loaded machine took over 30 s for 60.)
    limits = CallLimits(deadline=120.0, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits, process_limits=ProcessLimits(shell=4)) as k:
        await k.register_image(AgentImage("shell", tools=ALL_BUILTINS,
                                          needs=(*NEEDS, "shell:*:run")))
        pid = k.spawn("shell", caps=[*CAPS, "shell:sleep *:run"])
        await register(k, pid, "fan", body("""
  const got = await Promise.allSettled(Array.from({length: 24},
                                                  () => libos.shell.run(["sleep", "0.2"])));
  return got.map((r: any) => r.status === "fulfilled" ? r.value.exit_code : r.reason.code);"""))
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, sleeping_children("0.2"))
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            assert await k.call_tool(pid, "fan", {}) == [0] * 24
            nursery.cancel_scope.cancel()
        # Never more than the bound; and they did run side by side (a loaded machine's
        # sampling may miss the instant all four ran).
        assert 2 <= peak <= 4


# -- log floods --------------------------------------------------------------------------------

EMPTY_LINES = body("for (let i = 0; i < 10_000_000; i++) console.log(''); return 'done';")


def log_events(kernel: Kernel, pid: int) -> int:
    return kernel.store._query("SELECT COUNT(*) AS n FROM events WHERE pid=? AND kind='log'",
                               (pid,))[0]["n"]


async def probe_latency(kernel: Kernel, pid: int, until: trio.Event) -> list[float]:
    """Another process's syscalls (the builtin `now`: one clock.now each), one every 5 ms
    until `until` is set: how late each answer came, counted from when it was due (so time
    spent waiting for the broker's thread counts too)."""
    times: list[float] = []
    due = trio.current_time()
    while not until.is_set():
        assert await kernel.call_tool(pid, "now", {}) > 0
        now = trio.current_time()
        times.append(now - due)
        due = now + 0.005
        await trio.sleep_until(due)
    return times


async def test_an_empty_line_flood_ends_the_call(tmp_path: Path, deno: DenoSandbox) -> None:
    """Each empty line costs 64 bytes of the call's 4 MiB output cap: the flood ends after
    65,536 lines with `LimitExceeded`, the events table holds no more than that, and another
    process's syscalls keep answering within 250 ms meanwhile (95 in 100 of them: on a shared
    2-CPU machine the last few are the machine's, idle or not, and a loaded one stretches
    every figure; `bench.flood_bench` reports the p99).
    Without the fix the flood ran to its deadline and the neighbour waited ~1 s."""
    limits = CallLimits(deadline=60.0, max_output_bytes=4 << 20, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits) as k:
        pid, other = agent(k), agent(k)
        await register(k, pid, "flood", EMPTY_LINES)
        done = trio.Event()
        latencies: list[float] = []
        async with trio.open_nursery() as nursery:
            async def probe() -> None:
                latencies.extend(await probe_latency(k, other, done))
            nursery.start_soon(probe)
            start = trio.current_time()
            with pytest.raises(LimitExceeded, match="output"):
                await k.call_tool(pid, "flood", {})
            took = trio.current_time() - start
            done.set()
        lines = log_events(k, pid)
        latencies.sort()
        p95, p99 = (latencies[int(len(latencies) * q)] for q in (0.95, 0.99))
        print(f"flood: {lines} lines stored in {took:.2f} s; probe: {len(latencies)} calls, "
              f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
        assert lines <= limits.max_output_bytes // 64
        assert len(latencies) > 20 and p95 < 0.250


async def test_the_process_log_bound_ends_calls_past_it(tmp_path: Path,
                                                       deno: DenoSandbox) -> None:
    """Short lines cost 64 bytes each against the process's log bound too: three calls of
    300 lines fit 64 KiB, the fourth crosses it and fails; another process still logs."""
    limits = CallLimits(deadline=30.0, max_output_bytes=1 << 20, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits,
                           process_limits=ProcessLimits(log_bytes=64 << 10)) as k:
        pid, other = agent(k), agent(k)
        chatty = body("for (let i = 0; i < 300; i++) console.log('x'); return 'said';")
        for p in (pid, other):
            await register(k, p, "chatty", chatty)
        for _ in range(3):
            assert await k.call_tool(pid, "chatty", {}) == "said"
        with pytest.raises(LimitExceeded, match=f"process {pid} logged more than 65536"):
            await k.call_tool(pid, "chatty", {})
        assert log_events(k, pid) <= (64 << 10) // 64 + 1
        assert k.process(pid).usage.log_bytes > 64 << 10
        assert await k.call_tool(other, "chatty", {}) == "said"
        assert log_events(k, other) == 300


async def test_lines_are_stored_in_order_before_the_result(tmp_path: Path,
                                                           deno: DenoSandbox) -> None:
    """Batched, yet nothing acknowledged is missing: when the call returns, every line it
    logged is in the store, in order, with the events around it."""
    async with open_kernel(tmp_path, deno, LIMITS) as k:
        pid = agent(k)
        await register(k, pid, "count", body(
            "for (let i = 0; i < 1000; i++) console.log(String(i)); return 'counted';"))
        async with k.events.follow() as followed:
            assert await k.call_tool(pid, "count", {}) == "counted"
            stored = [e for e in k.store.events(pid=pid) if e["kind"] == "log"]
            assert [e["data"]["text"] for e in stored] == [str(i) for i in range(1000)]
            live = []
            while (event := followed.receive_nowait()) is not None:
                if event["kind"] == "log":
                    live.append(event)
                if len(live) == 1000:
                    break
        assert [e["seq"] for e in live] == [e["seq"] for e in stored]


async def test_a_syscall_put_to_a_person_counts_once(tmp_path: Path, deno: DenoSandbox) -> None:
    """A write under an `ask` capability is tried inline first, then waits for the answer:
    still one attempt. Three approved writes fit a cap of three; a fourth attempt does not."""
    from broker.kernel.approvals import AutoPolicy

    limits = CallLimits(deadline=30.0, max_syscalls=3, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits,
                           approvers=[AutoPolicy(lambda request: "once")]) as k:
        pid = k.spawn("agent", caps=[*CAPS[1:], {"kind": "fs", "scope": "/data/**",
                                                  "rights": ["write"], "effect": "ask"}])
        await register(k, pid, "writes", body("""
  for (let i = 0; i < args.n; i++) await libos.fs.write(`/data/${i}.txt`, "x");
  return args.n;"""))
        assert await k.call_tool(pid, "writes", {"n": 3}) == 3
        with pytest.raises(LimitExceeded, match="more than 3 syscalls"):
            await k.call_tool(pid, "writes", {"n": 4})
        assert len(k.approvals(state=None)) == 6
