"""Where a WebAssembly call runs: inline on the trio thread, or in a worker thread, and the
deadlines that bound it there.

Handing a call to a worker thread and back costs tens of microseconds
(`trio.to_thread.run_sync`, 40-80 µs here), more than a short call itself. So a call first
runs *inline* on the trio thread with a small slice of fuel, wall time and memory (see
`Scheduler._run`). If it finishes within the slice, that was the whole call. If it needs more
(its slice ran out, or it made a syscall that must wait), the inline attempt is abandoned and
the call is re-run from the start in a worker thread; syscalls the abandoned attempt made are
*not* made again: the re-run is fed their recorded responses, in order (wasm is deterministic
given its inputs, and a re-run that asks for something else is stopped). So the trio loop is
held by one call for at most one slice, and every effect happens once. After an abandoned
attempt, a module's next calls go straight to a thread: 1, then 2, 4, ... up to 1024 calls for
each further abandoned attempt, halving again with each attempt that finishes inline.

While a call runs in a worker thread, a ticker thread bumps the engine's epoch every `tick`
seconds; the store's epoch callback then checks the wall-clock deadline (which counts time in
host calls too) and cancellation of the trio task awaiting the call
(`trio.from_thread.check_cancelled`), and ends the call if either has come. So cancelling
that task stops the wasm within a tick (or its blocking syscall at once), and the task
returns only after its thread has: no thread is left running.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import trio
import wasmtime

from broker.errors import Cancelled, SandboxCrashed
from broker.lru import Lru
from sandboxes.base import CallLimits, SyscallHost
from sandboxes.wasm_abi import GuestAbi
from sandboxes.wasm_call import Restart, WasmCall
from sandboxes.wasm_entry import CompiledModule

MAX_BACKOFF = 1024  # most calls a module skips its inline attempt for, after abandoned ones
MAX_BACKOFFS = 4096  # modules whose inline record is kept


@dataclass(slots=True)
class Backoff:
    """After an abandoned inline attempt, a module's next `skip` calls go straight to a
    thread; `backoff` doubles with each abandoned attempt and halves with each inline
    success."""

    skip: int = 0
    backoff: int = 1

    def try_inline(self) -> bool:
        if self.skip:
            self.skip -= 1
            return False
        return True

    def inline_done(self) -> None:
        self.backoff = max(1, self.backoff // 2)

    def inline_abandoned(self) -> None:
        self.skip = self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF)


class Rerun:
    """A call to run in a worker thread, and the (request, response) of each syscall an
    abandoned inline attempt of it made (`made` in all), which the re-run is fed."""

    __slots__ = ("made", "record")

    def __init__(self, record: list[tuple[Any, bytes]], made: int) -> None:
        self.record, self.made = record, made


class Ticker:
    """Bumps an engine's epoch every `tick` seconds while a threaded call runs, so that its
    store's epoch callback checks the deadline and cancellation. A thread rather than a trio
    task: a task per call costs ~80 µs (spawn, timer, cancel), and a thread keeps ticking
    even while the trio loop is busy. It exits after a second with no calls."""

    IDLE = 1.0

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self._engine = engine
        self._tick = tick
        self._cv = threading.Condition()
        self._active = 0
        self._running = False

    def __enter__(self) -> None:
        with self._cv:
            self._active += 1
            if not self._running:
                self._running = True
                threading.Thread(target=self._loop, name="libos-wasm-epoch",
                                 daemon=True).start()
            self._cv.notify()

    def __exit__(self, *exc: object) -> None:
        with self._cv:
            self._active -= 1

    def _loop(self) -> None:
        while True:
            with self._cv:
                if self._active == 0:
                    self._cv.wait(timeout=self.IDLE)
                    if self._active == 0:
                        self._running = False
                        return
            time.sleep(self._tick)
            self._engine.increment_epoch()


class Scheduler:
    """Runs calls of one engine's modules: inline first, else in a worker thread."""

    def __init__(self, abi: GuestAbi, stats: dict[str, int], *, inline: bool, inline_fuel: int,
                 inline_seconds: float, inline_memory_mb: int, tick: float,
                 threads: int) -> None:
        self.abi = abi
        self.stats = stats
        self.inline = inline
        self.inline_fuel = inline_fuel
        self.inline_seconds = inline_seconds
        self.inline_memory_mb = inline_memory_mb
        self._backoff: Lru[str, Backoff] = Lru(MAX_BACKOFFS)  # forgotten: learnt again
        self._ticker = Ticker(abi.engine, tick)
        # The engine's pool has an instance for each of these threads and one inline call.
        self._threads = trio.CapacityLimiter(threads)

    def call_inline(self, entry: CompiledModule, payload: bytes, host: SyscallHost,
                    limits: CallLimits, deadline: float) -> Any:
        """The call's value (or its error, raised) if it runs inline and ends there, with no
        coroutine made for it (most warm calls); else a `Rerun` for `call_threaded`, which
        runs it in a worker thread."""
        backoff = self._backoff.get(entry.hash)
        if backoff is None:
            backoff = self._backoff[entry.hash] = Backoff()
        if not (self.inline and backoff.try_inline()):
            return Rerun([], 0)
        call = self._new_call(host, limits, deadline, inline=True)
        outcome = self._run(entry, call, payload)
        if not isinstance(outcome, Restart):
            self.stats["inline"] += 1
            backoff.inline_done()
            for level, text in call.logs:
                host.log(level, text)
            return self.abi.result(outcome)
        backoff.inline_abandoned()
        self.stats["restarted"] += 1
        return Rerun(call.record, call.syscalls)

    async def call_threaded(self, entry: CompiledModule, payload: bytes, host: SyscallHost,
                            limits: CallLimits, deadline: float, rerun: Rerun) -> Any:
        """The call run in a worker thread, fed the syscalls an abandoned inline attempt
        made (`rerun`)."""
        call = self._new_call(host, limits, deadline, inline=False)
        call.replay, call.syscalls = rerun.record, rerun.made
        self.stats["threaded"] += 1
        with self._ticker:
            # Not abandoned on cancellation: the store's epoch check sees it (through
            # trio.from_thread.check_cancelled) and ends the wasm, and the call returns only
            # once its thread has; blocking syscalls run in this task, so they are cancelled
            # with it.
            outcome = await trio.to_thread.run_sync(self._run, entry, call, payload,
                                                    abandon_on_cancel=False,
                                                    limiter=self._threads)
        if isinstance(outcome, Cancelled) and call.cancelled:
            await trio.lowlevel.checkpoint()  # raises trio's Cancelled if still cancelled
        if isinstance(outcome, Restart):  # cannot happen outside inline attempts
            raise SandboxCrashed("wasm call could not run")
        return self.abi.result(outcome)

    def _new_call(self, host: SyscallHost, limits: CallLimits, deadline: float, *,
                  inline: bool) -> WasmCall:
        call = WasmCall(host, limits, deadline, inline)
        call.memory_limit = limits.memory_mb << 20
        if inline:
            call.fuel = min(limits.fuel, self.inline_fuel)
            call.inline_deadline = time.perf_counter() + self.inline_seconds
            if self.inline_memory_mb < limits.memory_mb:
                call.memory_limit, call.capped = self.inline_memory_mb << 20, True
        else:
            call.fuel = limits.fuel
        return call

    def _run(self, entry: CompiledModule, call: WasmCall,
             payload: bytes) -> bytes | BaseException:
        """One attempt. An inline attempt runs with at most `inline_memory_mb` of memory, so
        that what it can touch while it holds the trio loop is bounded too; `memory.grow`
        beyond that fails in it where the call's own limit would have let it succeed. So a
        capped attempt that ends in any error, or ends close to its cap, or makes a syscall
        close to its cap, is abandoned and re-run in a thread with the call's limits (a
        tool that copes with a failed grow without trapping or erring still sees -1, which
        WebAssembly allows `memory.grow` to return at any time)."""
        outcome = self.abi.attempt(entry, call, payload)
        if call.capped and not isinstance(outcome, Restart) and (
                isinstance(outcome, BaseException) or call.near_cap(call.final_memory)):
            return Restart("inline attempt ended in an error or near its memory cap")
        return outcome

    def forget(self) -> None:
        self._backoff.clear()
