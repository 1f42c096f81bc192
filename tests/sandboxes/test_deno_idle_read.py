"""A Deno sandbox with nothing under way waits for the broker's next frame in a blocking read
of stdin (`readChunk` in ts-runtime/main.ts): an async read goes through a thread of Deno's
blocking pool, tens of µs more per warm call. While a call is under way its frames are read
through the event loop, which its timers, imports and syscall answers need: calls that wait
on each still answer, and so do the calls after them."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from sandboxes.base import CallLimits, ToolCode
from sandboxes.deno import DenoSandbox
from sandboxes.deno_process import DenoProcess
from sandboxes.testing import NullHost

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ECHO = "export default async function run(args: unknown) { return args; }"
# Waits on the event loop (a timer) before it answers.
NAP = """export default async function run() {
  await new Promise((r) => setTimeout(r, 30));
  return "napped";
}"""
# Ends only after many more microtask hops than the runtime waits before it chooses its read.
HOPS = """export default async function run() {
  for (let i = 0; i < 500; i++) await null;
  return 500;
}"""
# Makes syscalls: each answer comes back as a frame while the call is under way.
SYSCALLS = """export default async function run(args: { n: number }, libos: any) {
  let t = 0;
  for (let i = 0; i < args.n; i++) t = await libos.clock.now();
  return t;
}"""
READS = {"0", "63"}  # read(2)'s number on Linux: x86-64's, arm64's


def code(name: str, source: str) -> ToolCode:
    return ToolCode(name, "ts", source.encode(), hashlib.sha256(source.encode()).hexdigest())


def waiting_in(sb: DenoProcess) -> str:
    """The system call the sandbox's main thread is blocked in (its number, as /proc says)."""
    pid = sb.process.pid
    return Path(f"/proc/{pid}/task/{pid}/syscall").read_text().split()[0]


async def blocked_in_read(sb: DenoProcess) -> bool:
    with trio.move_on_after(10):
        while True:
            try:
                if waiting_in(sb) in READS:
                    return True
            except OSError:  # (not ours to read: nothing to check here)
                pytest.skip("/proc/<pid>/task/<pid>/syscall is not readable")
            await trio.sleep(0.02)
    return False


async def test_an_idle_sandbox_waits_in_a_blocking_read_and_still_serves_every_kind_of_call(
        ) -> None:
    host = NullHost(7.5, authority="a/-")
    async with DenoSandbox(spares=0) as deno:
        for _ in range(3):  # the first call waits for its import: read through the event loop
            assert await deno.call(code("echo", ECHO), {"k": 1}, host, CallLimits()) == {"k": 1}
        [sb] = deno.pool.idle[("a/-", deno.memory_mb)]
        assert await blocked_in_read(sb)  # (an async read: the main thread in epoll_wait)
        cases = [("nap", NAP, {}, "napped"), ("hops", HOPS, {}, 500),
                 ("sys", SYSCALLS, {"n": 3}, 7.5), ("echo", ECHO, {"k": 2}, {"k": 2})]
        for name, source, args, answer in cases * 2:
            with trio.fail_after(20):
                assert await deno.call(code(name, source), args, host, CallLimits()) == answer
        assert deno.pool.idle[("a/-", deno.memory_mb)] == [sb]  # one sandbox served them all
        assert await deno.call(code("echo", ECHO), {"k": 3}, host, CallLimits()) == {"k": 3}
        assert await blocked_in_read(sb)


class SlowHost(NullHost):
    """Answers every syscall after `delay` seconds (a blocking one: a task of the driver's)."""

    def __init__(self, delay: float) -> None:
        super().__init__(1.5, authority="slow/-")
        self.delay = delay
        self.asked = trio.Event()
        self.logged: list[tuple[str, bool]] = []  # (text, whether an answer was given yet)
        self.answered = False

    def is_blocking(self, name: str) -> bool:
        return True

    async def syscall(self, name: str, args: Any) -> Any:
        self.answered = False
        self.asked.set()
        await trio.sleep(self.delay)
        self.answered = True
        return self.answer

    def log(self, level: str, text: str) -> None:
        self.logged.append((text, self.answered))


# A timer that fires while its syscall's answer is awaited.
TICKS = """export default async function run(_args: unknown, libos: any) {
  setTimeout(() => console.log("tick"), 50);
  return await libos.clock.now();
}"""


async def test_a_call_waiting_for_a_syscall_alone_waits_in_a_blocking_read() -> None:
    """A call that awaits nothing but its syscall's answer blocks in read(2) for it; one that
    set a timer meanwhile is read for through the event loop, so its timer fires on time."""
    slow = SlowHost(0.0)
    async with DenoSandbox(spares=0) as deno:
        for _ in range(2):  # (its first call waits for its import: through the event loop)
            assert await deno.call(code("sys", SYSCALLS), {"n": 1}, slow, CallLimits()) == 1.5
        slow.delay, slow.asked = 2.0, trio.Event()
        [sb] = deno.pool.idle[("slow/-", deno.memory_mb)]
        async with trio.open_nursery() as nursery:
            async def one_syscall() -> None:
                assert await deno.call(code("sys", SYSCALLS), {"n": 1}, slow,
                                       CallLimits()) == 1.5
            nursery.start_soon(one_syscall)
            await slow.asked.wait()
            assert await blocked_in_read(sb)  # (before: epoll_wait, the event loop's)
            assert not slow.answered  # found so while the answer was awaited
        assert await deno.call(code("ticks", TICKS), {}, slow, CallLimits()) == 1.5
        assert slow.logged == [("tick", False)]  # logged before the answer came, 2 s later
