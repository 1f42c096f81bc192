"""The Deno driver's warm pool: when the spare taken is replaced.

A spare taken for a new authority (its registration's check, or its first call) is replaced
once that first call has ended, or `REFILL_DELAY` after it was taken: a Deno start would share
the CPUs with the check and the call it was taken for. Whoever finds no spare meanwhile does
not wait for the delay. An idle sandbox evicted is killed by the pool's task once that first
call has ended, not on the path of the check that evicted it, and never outlives the driver or
the kernel. Real Deno processes throughout.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from sandboxes import deno_pool
from sandboxes.base import CallLimits, ToolCode
from sandboxes.deno import DenoSandbox
from sandboxes.testing import NullHost
from tests.sandboxes.conftest import LIMITS, agent, kernel_over, register_tool

# A call that stays in its sandbox for a while (a timer: no CPU held meanwhile).
NAP = "export default async function run() { await new Promise((r) => setTimeout(r, 600)); }"
ECHO = "export default async function run(args: unknown) { return args; }"


def code(name: str, source: str) -> ToolCode:
    return ToolCode(name, "ts", source.encode(), hashlib.sha256(source.encode()).hexdigest())


def host(authority: str) -> NullHost:
    return NullHost(authority=authority)


@pytest.fixture
def long_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deno_pool, "REFILL_DELAY", 30.0)


async def test_the_spare_taken_is_replaced_after_its_first_call(long_delay: None) -> None:
    async with DenoSandbox(spares=1) as deno:
        await deno.warm()
        assert deno.stats["started"] == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deno.call, code("nap", NAP), {}, host("a/-"), CallLimits())
            await trio.sleep(0.4)  # the call holds the spare it took; nothing else starts
            assert deno.stats["spare_acquires"] == 1
            assert deno.stats["started"] == 1 and deno.pool.spare_starting == 0
        # its call has ended: the next spare starts now, not after the delay
        with trio.fail_after(20):
            while len(deno.pool.ready) < 1:
                await trio.sleep(0.01)
        assert deno.stats["started"] == 2


async def test_the_spare_is_replaced_by_the_delay_when_no_call_comes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deno_pool, "REFILL_DELAY", 0.2)
    async with DenoSandbox(spares=1) as deno:
        await deno.warm()
        await deno.prepare("echo", "ts", ECHO.encode(), authority="a/-")  # takes the spare
        assert deno.stats["spare_acquires"] == 1 and deno.pool.held is not None
        with trio.fail_after(20):
            while len(deno.pool.ready) < 1:  # the first call never comes
                await trio.sleep(0.01)
        assert deno.stats["started"] == 2


async def test_a_registration_meanwhile_hurries_the_next_spare(long_delay: None) -> None:
    """Another authority registering while the spare taken is held does not wait out the
    delay, nor start a process of its own: it takes the next spare, started at once."""
    async with DenoSandbox(spares=1) as deno:
        await deno.warm()
        await deno.prepare("echo", "ts", ECHO.encode(), authority="a/-")
        with trio.fail_after(10):  # well before the 30 s delay
            await deno.prepare("echo", "ts", ECHO.encode(), authority="b/-")
        assert deno.stats["spare_acquires"] == 2
        assert deno.stats["cold_acquires"] == 0
        for authority in ("a/-", "b/-"):  # each checked tool runs in its own sandbox
            assert await deno.call(code("echo", ECHO), {"k": authority}, host(authority),
                                   CallLimits()) == {"k": authority}
        assert deno.stats["cold_acquires"] == 0


async def test_a_spare_that_dies_held_is_replaced_at_once(long_delay: None) -> None:
    async with DenoSandbox(spares=1) as deno:
        await deno.warm()
        await deno.prepare("echo", "ts", ECHO.encode(), authority="a/-")
        held = deno.pool.held
        assert held is not None
        held.process.kill()
        with trio.fail_after(20):
            while len(deno.pool.ready) < 1:
                await trio.sleep(0.01)
        assert deno.pool.held is None


def emitting(deno: DenoSandbox) -> DenoSandbox:
    """`deno`, whose sandboxes keep what Deno transpiles in the service's DENO_DIR (the
    driver's own keep nothing: `DenoSandbox.emit_cache`), so that `compiled_tool_modules`
    sees what they imported."""
    deno.emit_cache = True
    return deno


def compiled_tool_modules(deno: DenoSandbox) -> int:
    """How many `data:` modules (tools, and the warm-up's own) the sandboxes of an `emitting`
    driver have compiled: Deno keeps each one's emit in the service's private DENO_DIR."""
    with contextlib.suppress(FileNotFoundError):
        return len(os.listdir(os.path.join(deno._env["DENO_DIR"], "gen", "data")))
    return 0


async def test_a_spare_wanted_as_it_starts_is_not_warmed_up(long_delay: None) -> None:
    """A registration waiting for the spare being started gets it untouched: no `warm` frame,
    so its check never waits for a warm-up round under way (issue #17: the cold path). A spare
    nobody waits for is told to warm up, and does."""
    async with emitting(DenoSandbox(spares=1)) as deno:
        with trio.fail_after(20):
            while not deno.pool.spare_starting:
                await trio.sleep(0)
        await deno.prepare("echo", "ts", ECHO.encode(), authority="a/-")  # waits for it
        assert deno.stats["spare_acquires"] == 1 and deno.stats["warm_ups"] == 0
        assert await deno.call(code("echo", ECHO), {"k": 1}, host("a/-"),
                               CallLimits()) == {"k": 1}
        assert compiled_tool_modules(deno) == 1  # the tool's: no warm-up of its own ran
        # the next spare, started once that call has ended, waits for nobody: it warms up
        with trio.fail_after(20):
            while deno.stats["warm_ups"] < 1 or compiled_tool_modules(deno) < 2:
                await trio.sleep(0.01)
        assert deno.stats["started"] == 2
        # and a warmed spare serves its first check and call as any other
        await deno.prepare("echo", "ts", ECHO.encode(), authority="b/-")
        assert await deno.call(code("echo", ECHO), {"k": 2}, host("b/-"),
                               CallLimits()) == {"k": 2}
        assert deno.stats["spare_acquires"] == 2 and deno.stats["cold_acquires"] == 0


async def test_a_sandbox_warms_up_only_when_told() -> None:
    """The runtime goes through its warm-up on the broker's `warm` frame alone: a sandbox
    started and left waiting without one compiles nothing of its own."""
    async with emitting(DenoSandbox(spares=0)) as deno:
        sb = await deno._start(deno.memory_mb)
        await trio.sleep(0.5)  # time enough for a warm-up that nobody asked for
        assert compiled_tool_modules(deno) == 0
        await deno.pool.warm_up(sb)
        with trio.fail_after(20):
            while compiled_tool_modules(deno) < 1:
                await trio.sleep(0.01)
        assert sb.idle_ok()  # it answered nothing: the warm-up's frames go nowhere


# Leaves code running after its call, where the runtime cannot clear it (a `node:timers`
# interval: not the runtime's wrapped setInterval), spinning the CPU.
LEAVES_A_SPIN = """
export default async function run(args: { busy_ms: number, every_ms: number }) {
  const timers: any = await import("node:timers");
  timers.setInterval(() => {
    const end = Date.now() + args.busy_ms;
    while (Date.now() < end) { /**/ }
  }, args.every_ms);
  return "left running";
}
"""


@pytest.mark.parametrize("busy_ms,every_ms", [(50, 1), (10, 100)])  # a spin; a thin one
async def test_an_idle_sandbox_that_keeps_using_the_cpu_is_killed(
        monkeypatch: pytest.MonkeyPatch, busy_ms: int, every_ms: int) -> None:
    monkeypatch.setattr(deno_pool, "IDLE_WINDOW", 0.3)
    monkeypatch.setattr(deno_pool, "IDLE_CPU_BUDGET", 0.3)
    async with DenoSandbox(spares=1) as deno:
        await deno.warm()
        quiet, spinner = host("quiet"), host("spinner")
        assert await deno.call(code("echo", ECHO), {"k": 1}, quiet, CallLimits()) == {"k": 1}
        assert await deno.call(code("spin", LEAVES_A_SPIN), {
            "busy_ms": busy_ms, "every_ms": every_ms}, spinner, CallLimits()) == "left running"
        [spinning] = deno.pool.idle[("spinner", deno.memory_mb)]
        [idle] = deno.pool.idle[("quiet", deno.memory_mb)]
        with trio.fail_after(20):
            while not spinning.dead:
                await trio.sleep(0.05)
        assert "CPU while idle" in str(spinning.death)
        assert not idle.dead  # the neighbour idle beside it, using nothing, is left alone
        assert deno.pool.idle[("quiet", deno.memory_mb)] == [idle]
        # the spinner's authority is served again, by a new sandbox
        assert await deno.call(code("echo", ECHO), {"k": 2}, spinner, CallLimits()) == {"k": 2}


BUSY_CALL = """
export default function run() { const end = Date.now() + 80; while (Date.now() < end) { /**/ } }
"""


async def test_cpu_a_sandbox_uses_in_its_calls_is_not_counted_as_idle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls that start and end between two looks of the watch reset what it counts."""
    monkeypatch.setattr(deno_pool, "IDLE_WINDOW", 0.3)
    monkeypatch.setattr(deno_pool, "IDLE_CPU_BUDGET", 0.2)
    async with DenoSandbox(spares=1) as deno:
        await deno.warm()
        busy = host("busy")
        await deno.call(code("busy", BUSY_CALL), {}, busy, CallLimits())
        [first] = deno.pool.idle[("busy", deno.memory_mb)]
        for _ in range(8):  # 0.64 s of CPU in calls, more than the idle budget
            await trio.sleep(0.25)
            await deno.call(code("busy", BUSY_CALL), {}, busy, CallLimits())
        await trio.sleep(0.7)
        assert not first.dead and deno.pool.idle[("busy", deno.memory_mb)] == [first]


async def test_authorities_that_ran_once_leave_no_key_behind() -> None:
    """Each process has authorities of its own: a pool serving many processes one after
    another keeps idle lists for the sandboxes it keeps (`max_idle`), not a key for every
    authority it ever served."""
    async with DenoSandbox(spares=1, max_idle=2) as deno:
        for n in range(8):
            assert await deno.call(code("echo", ECHO), n, host(f"{n}/-"), CallLimits()) == n
        assert len(deno.pool.lru) == 2 and len(deno.pool.idle) == 2
        assert await deno.call(code("echo", ECHO), 7, host("7/-"), CallLimits()) == 7  # warm
        assert len(deno.pool.idle) == 2


async def _evicting_registration(deno: DenoSandbox) -> Any:
    """An idle sandbox of `a/-` (one call), then a registration for `b/-`, whose check puts
    the spare it took in the idle lists (`max_idle=1`): `a/-`'s is evicted. It is returned."""
    assert await deno.call(code("echo", ECHO), 1, host("a/-"), CallLimits()) == 1
    [evicted] = deno.pool.idle[("a/-", deno.memory_mb)]
    await deno.warm()
    await deno.prepare("echo", "ts", ECHO.encode(), authority="b/-")
    assert ("a/-", deno.memory_mb) not in deno.pool.idle  # out of the lists: no call gets it
    return evicted


async def test_an_evicted_sandbox_is_killed_after_the_first_call_not_on_its_path(
        long_delay: None) -> None:
    """The eviction a registration's check causes kills nothing on the registration's path:
    the evicted process dies once the tool's first call has answered (issue #17)."""
    async with DenoSandbox(spares=1, max_idle=1) as deno:
        await deno.warm()
        evicted = await _evicting_registration(deno)
        await trio.sleep(0.05)
        assert not evicted.dead  # the check's release did not kill it
        assert await deno.call(code("echo", ECHO), 2, host("b/-"), CallLimits()) == 2
        with trio.fail_after(10):
            await evicted.gone.wait()
        assert evicted.process.returncode is not None
        assert await deno.call(code("echo", ECHO), 3, host("a/-"), CallLimits()) == 3  # anew


async def test_no_evicted_sandbox_outlives_the_driver(long_delay: None) -> None:
    """An evicted sandbox still waiting for its kill (the first call never came) is killed
    and reaped when the driver closes, like every other process of it."""
    async with DenoSandbox(spares=1, max_idle=1) as deno:
        await deno.warm()
        evicted = await _evicting_registration(deno)
        assert not evicted.dead
        pids = [sb.process.pid for sb in deno._all]
    assert evicted.process.returncode is not None and deno.running() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_burst_of_evictions_leaves_one_waiting() -> None:
    """Evictions in a row (three sandboxes of one authority going idle, one kept): the older
    evicted one is killed at once, so no more than one process outlives the pool's bounds."""
    async with DenoSandbox(spares=0, max_idle_per_authority=1) as deno:
        sandboxes = [await deno._start(deno.memory_mb) for _ in range(3)]
        for sb in sandboxes:
            sb.authority = "a/-"
            deno.pool.release(sb)
        kept, older, newer = sandboxes
        assert deno.pool.idle[("a/-", deno.memory_mb)] == [kept]
        assert older.dead and not newer.dead  # (no spare held: the task kills it next)
        with trio.fail_after(10):
            await newer.gone.wait()
        assert not kept.dead


async def test_no_evicted_sandbox_outlives_the_kernel(tmp_path: Path, long_delay: None) -> None:
    """The same through a kernel that closes the driver it was handed: a process's tool
    registered and called, another process's registration evicts its sandbox, whose kill
    waits for a first call that never comes; the kernel's close kills and reaps it."""
    deno = DenoSandbox(spares=1, max_idle=1, memory_mb=LIMITS.memory_mb)
    async with kernel_over(tmp_path, deno) as k:
        first, second = agent(k), agent(k)
        await register_tool(k, first, "echo", ECHO, lang="ts")
        assert await k.call_tool(first, "echo", {"n": 1}) == {"n": 1}
        [evicted] = deno.pool.lru
        await deno.warm()
        await register_tool(k, second, "echo", ECHO, lang="ts")
        assert evicted not in deno.pool.lru and not evicted.dead  # waiting for its kill
        pids = [sb.process.pid for sb in deno._all]
    assert evicted.process.returncode is not None and deno.running() == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
