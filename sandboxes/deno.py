"""TypeScript tools in Deno processes that have no permission at all.

Every sandbox is a `deno run` of `ts-runtime/main.ts` with no permission
(`sandboxes/deno_launch.py` says how it is started). It speaks the frame protocol of
`broker.protocol` over its stdin and stdout (`sandboxes/deno_channel.py`); everything it may do
is a syscall frame that the kernel checks against the one authority the sandbox belongs to
(docs/DESIGN.md, invariant 2): a sandbox process serves one authority
(`SyscallHost.authority`: one process and the chain of manifests narrowing the call) for its
whole life and holds at most one call at a time.

Limits are enforced by killing the process, never by asking it: the per-call deadline, the
heap cap (V8 aborts; the call gets `LimitExceeded`), the output cap (`host.log` raises) and the
syscall-count cap (the kernel refuses the syscall). Trio cancellation of a call kills its
sandbox inside a shielded scope. A sandbox that dies fails only its call in flight, with
`SandboxCrashed`; the next call gets another one.

The driver's service is one nursery: per process, one lifetime task keeps the tail of stderr
and reaps the exit; one watchdog task kills the sandboxes of calls past their deadline; one
task keeps the warm pool's spares started (`sandboxes/deno_pool.py`).

Registration (`prepare`) of a process's tool is checked in the sandbox that will run the
tool's first call (issue #17): an idle sandbox of the call's authority, else a spare, bound to
that authority for good, imports the tool (a `check` frame: its TypeScript parsed, its
top-level code run, `run` found, never called) and keeps it loaded for that call. A check
that fails in any way (a parse error, a throw, no `run`, past `check_timeout`) kills that
sandbox, so what the refused module left serves nobody. The source is stored unchanged.
A tool of an image (no process yet) is checked by `ts-runtime/check.ts` in a process of its
own, which imports the tool in a fresh Worker and never runs it; such a checker checks one tool
and is killed (a Worker that spins outlives `terminate()`); the next one starts meanwhile.

Its lifecycle is every driver's (`sandboxes.base.SandboxDriver`): `async with DenoSandbox() as
deno:` (its processes live in that nursery), or an unentered instance handed to
`Kernel.open(sandboxes=[...])`, which then starts its service on first use and closes it with
the kernel.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

from broker.errors import (
    InvalidArgument,
    LibosError,
    LimitExceeded,
    ProtocolError,
    SandboxCrashed,
)
from broker.protocol import Call, CheckTool, LoadTool
from sandboxes import deno_cache
from sandboxes.base import CallLimits, SandboxDriver, SyscallHost, ToolCode
from sandboxes.deno_channel import check_output, pump, write
from sandboxes.deno_launch import (
    CHECK,
    CHECK_DATA_BASE_MB,
    DATA_BASE_MB,
    MAIN,
    RUNTIME_DIR,
    deno_argv,
    deno_flags,
    find_deno,
    limit_process,
    make_home,
    process_env,
    rlimit_data_mb,
)
from sandboxes.deno_pool import WarmPool
from sandboxes.deno_process import DenoCall, DenoProcess, exit_reason, lifetime
from sandboxes.deno_register import Registration
from sandboxes.prestart import Prestarted
from sandboxes.service_ctrl_c import send_on_ctrl_c

log = logging.getLogger("libos.sandboxes.deno")

class DenoSandbox(Registration, SandboxDriver):
    """The `Sandbox` for `ts` tools.

    Hooks for a driver that runs another entry point in the same kind of process (the
    Pyodide driver, `sandboxes/pyodide.py`, is one); everything else is this driver's own:

    * class attributes `kind` (what the runtime must say in its hello), `langs`,
      `check_entry` (the registration checker's entry point), `data_base_mb` and
      `check_data_base_mb` (RLIMIT_DATA beyond the heap, for sandboxes and the checker),
      `checker_per_check` (a checker that runs a tool's code checks that one tool only),
      `check_in_spare` (a process's tool is checked in the sandbox that will run it, not by
      the checker), `warms_spares` (an idle spare is told to warm up: a runtime without a
      warm-up says False), `emit_cache` (Deno keeps what sandboxes transpile: `process_env`);
      the constructor's `runtime` is the sandboxes' entry point;
    * `argv(memory_mb, entry)`: the command line of a sandbox process;
    * `bound_key(authority, code_hash)`: what a sandbox serving a call (`pool_key`), or
      checking a tool for one, is bound to for its whole life;
    * `exit_reason(sb)`: why a process that exited died;
    * `prepare` may be extended (check more, then call this one).
    """

    kind = "deno"
    langs = ("ts",)
    check_entry = CHECK
    data_base_mb = DATA_BASE_MB
    check_data_base_mb = CHECK_DATA_BASE_MB
    checker_per_check = True  # TypeScript's checker imports the tool in a Worker: its code runs
    # A registration for a process is checked in the sandbox that will run the tool (a spare
    # bound to the tool's authority), which then keeps it loaded for the first call.
    check_in_spare = True
    # A spare nobody waits for is told to warm up (`WarmUp`; ts-runtime/main.ts says what it does).
    warms_spares = True
    # Its runtime is JavaScript: what Deno would transpile and keep is each tool (`process_env`).
    emit_cache = False

    def __init__(
        self,
        *,
        spares: int = 1,
        max_idle_per_authority: int = 2,
        max_idle: int = 16,
        memory_mb: int | None = None,
        deno: str | None = None,
        runtime: str | Path | None = None,
        check_timeout: float = 5.0,
        startup_timeout: float = 20.0,
        data_limit_mb: int | None = None,
        runtime_cache: bool = True,
        refill: bool = True,
        prestarted: Prestarted | None = None,
    ) -> None:
        self.spares = spares
        self.max_idle_per_authority = max_idle_per_authority
        self.max_idle = max_idle
        self.memory_mb = memory_mb if memory_mb is not None else CallLimits().memory_mb
        self.deno = deno or find_deno()
        self.runtime = Path(runtime) if runtime is not None else MAIN
        self.check_timeout = check_timeout
        self.startup_timeout = startup_timeout
        self.data_limit_mb = data_limit_mb
        # Seed each service's private DENO_DIR with the runtime's compiled files
        # (`sandboxes/deno_cache.py`), made once in the user's cache directory.
        self.runtime_cache = runtime_cache
        # A process started ahead in a home of its own (`sandboxes/prestart.py`): the service
        # runs in that home, and adopts the process as its first spare if it is what it
        # would have started.
        self._prestarted = prestarted
        self._nursery: trio.Nursery | None = None
        self._service_scope: trio.CancelScope | None = None
        self._service_done: trio.Event | None = None
        self._starting_service: trio.Event | None = None
        self._closed = False
        self._tmp: str | None = None
        self._cwd = ""
        self._env: dict[str, str] = {}
        self._all: set[DenoProcess] = set()
        self._checker: DenoProcess | None = None
        self._watched: set[DenoCall] = set()
        self._watch_until = math.inf
        self._warned_memory = False
        self._watch_wakeup = trio.Event()
        self._check_lock = trio.Lock()
        self._seeded = trio.Event()  # the service's DENO_DIR is ready for a process
        self.stats = {"started": 0, "killed": 0, "cold_acquires": 0, "warm_acquires": 0,
                      "spare_acquires": 0, "warm_ups": 0}
        self.pool = WarmPool(spares=spares, max_idle_per_authority=max_idle_per_authority,
                             max_idle=max_idle, memory_mb=self.memory_mb, stats=self.stats,
                             refill=refill)

    # -- hooks ------------------------------------------------------------------------------

    def argv(self, memory_mb: int, entry: Path) -> list[str]:
        """The command line of a sandbox process running `entry` (`deno_argv`)."""
        return deno_argv(self.deno, memory_mb, entry)

    def pool_key(self, host: SyscallHost, code: ToolCode) -> str:
        """What a sandbox serving this call is bound to for its whole life."""
        return self.bound_key(host.authority, code.hash)

    def bound_key(self, authority: str, code_hash: str) -> str:
        """The key of `pool_key` from the call's authority and the tool's content hash: the
        authority. Tools of one authority share sandboxes: the runtime hardens the realm
        (ts-runtime/lockdown.ts), so what one call leaves cannot reach another's syscalls."""
        return authority

    def exit_reason(self, sb: DenoProcess) -> LibosError:
        """Why an exited process died, unless the driver killed it (then `sb.death` says)."""
        return exit_reason(sb)

    # -- the service: a nursery holding every process's lifetime task, the refill, the watchdog

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(self._serve)

    def close_soon(self) -> None:
        """Begin closing, not waiting for the end (`aclose` does): drivers told so first close
        together, not one after another (`open_sandboxes`)."""
        self._closed = self.pool.closed = True
        if self._service_scope is not None:
            self._service_scope.cancel()

    async def aclose(self) -> None:
        self.close_soon()
        if self._service_done is not None:
            with trio.CancelScope(shield=True):
                await self._service_done.wait()

    async def _serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._service_done = trio.Event()
        home = self._prestarted.home if self._prestarted is not None else make_home()
        self._tmp, self._cwd, self._env = home.tmp, home.cwd, home.env
        deno_dir = home.deno_dir
        try:
            with trio.CancelScope() as scope:
                self._service_scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self.pool.refill, self._start, self.warms_spares)
                    nursery.start_soon(self._watchdog)
                    nursery.start_soon(self.pool.look_after)
                    nursery.start_soon(self._seed, deno_dir)
                    task_status.started()
                    try:
                        await trio.sleep_forever()
                    finally:  # closing: the home is removed while the processes die
                        nursery.start_soon(self._remove_home)
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                if self._prestarted is not None:  # never adopted
                    self._prestarted.kill()
                for sb in list(self._all):
                    sb.kill(SandboxCrashed("the Deno sandbox service closed"))
                    with trio.move_on_after(2):
                        await sb.process.wait()
                if os.path.lexists(self._tmp):  # (not removed, or a dying process wrote)
                    await trio.to_thread.run_sync(shutil.rmtree, self._tmp, True)
            self._service_done.set()

    async def _remove_home(self) -> None:
        """As the service closes: its processes killed, its home removed while they die (the
        removal, in a thread, and a killed Pyodide's death each take tens of ms, more on a
        busy machine: one after the other, they held up whoever waits for the close)."""
        with trio.CancelScope(shield=True):
            for sb in list(self._all):
                sb.kill(SandboxCrashed("the Deno sandbox service closed"))
            # (a seed still copying into the home, in its thread, would find it gone and warn
            # of a failed seed on the way out: it takes milliseconds, wait for it)
            await self._seeded.wait()
            await trio.to_thread.run_sync(shutil.rmtree, self._tmp, True)

    async def _seed(self, deno_dir: str) -> None:
        """Seed the service's DENO_DIR from the runtime cache (while whoever opened the
        service goes on: a process starts once it is done), or make that cache."""
        template = None
        try:
            if self.runtime_cache:
                template = deno_cache.template_dir(self.argv(self.memory_mb, self.runtime))
                if (self._prestarted is not None and self._prestarted.seeded) or \
                        await trio.to_thread.run_sync(deno_cache.seed, deno_dir, template):
                    template = None
        finally:
            self._seeded.set()
        if template is not None:
            await deno_cache.make_template(self.argv(self.memory_mb, self.runtime), self._env,
                                           self._cwd, template, self.startup_timeout)

    async def _system_serve(self, started: trio.Event) -> None:
        # The fallback when nobody entered us: a system task owns the nursery. It must never
        # raise (that would crash the trio run), so it logs instead.
        try:  # (its task_status: `started` set, whatever value it is given)
            if not self._closed:  # (closed before this task's first turn: nothing starts)
                await self._serve(SimpleNamespace(started=lambda value=None: started.set()))
        except Exception:
            log.exception("the Deno sandbox service failed")
        except BaseException as exc:  # a Ctrl-C sent on to the main task (`service_ctrl_c`)
            if not send_on_ctrl_c(exc, log, "the Deno sandbox service failed"):
                raise  # (trio's Cancelled, at the run's end)
        finally:
            started.set()

    async def _service(self) -> trio.Nursery:
        if self._nursery is not None:
            return self._nursery
        if self._closed:
            raise SandboxCrashed("the Deno sandbox service is closed")
        if self._starting_service is None:
            self._starting_service = trio.Event()
            trio.lowlevel.spawn_system_task(self._system_serve, self._starting_service,
                                            name="libos-deno-service")
        await self._starting_service.wait()
        if self._nursery is None:
            raise SandboxCrashed("the Deno sandbox service did not start")
        return self._nursery

    async def warm(self) -> None:
        """Wait until the spares are started, and the registration checker where a process's
        tools are checked there (`check_in_spare` false)."""
        await self._service()
        with trio.fail_after(self.startup_timeout):
            while len(self.pool.ready) < self.spares and (
                    self.pool.spares_left != 0 or self.pool.spare_starting):
                if self._closed:  # (its spares never come: closed while it waited)
                    raise SandboxCrashed("the Deno sandbox service closed")
                self.pool.hurry()  # not after a spare just taken has answered: now
                await trio.sleep(0.005)
        if self.check_in_spare:
            return  # an image's tool starts a checker when it needs one
        async with self._check_lock:
            if self._checker is None or self._checker.dead:
                self._checker = await self._start(self.memory_mb, self.check_entry)

    def running(self) -> int:
        """How many of its processes are running (spawned, not yet reaped)."""
        return len(self._all)

    # -- processes -----------------------------------------------------------------------------

    async def _start(self, memory_mb: int, entry: Path | None = None) -> DenoProcess:
        nursery = await self._service()
        await self._seeded.wait()
        entry = entry or self.runtime
        argv = self.argv(memory_mb, entry)
        env = process_env(self._env, self.emit_cache)  # (its checker too: it runs tools)
        try:
            process = self._adopt(argv, env) or await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=self._cwd, start_new_session=True, env=env, restore_signals=False)
        except OSError as exc:
            raise SandboxCrashed(f"cannot start Deno: {exc}") from None
        limit_process(process.pid, self._data_mb(memory_mb, entry))  # (and each file it writes)
        sb = DenoProcess(process, memory_mb, entry, self.kind, nursery)
        self._all.add(sb)
        self.stats["started"] += 1
        nursery.start_soon(self._lifetime, sb, name=f"libos-deno-{process.pid}")
        try:
            with trio.move_on_after(self.startup_timeout):
                await pump(sb, sb.ready.is_set)
        except BaseException:  # cancelled while starting: the process is nobody's
            sb.kill(SandboxCrashed("cancelled while starting"))
            raise
        if not sb.ready.is_set() or sb.dead:
            sb.kill(sb.death or SandboxCrashed("Deno did not start"))
            with trio.move_on_after(2):
                await sb.gone.wait()
            tail = bytes(sb.stderr_tail[-500:]).decode(errors="replace")
            raise SandboxCrashed(f"the Deno sandbox did not start: {tail}")
        return sb

    def _data_mb(self, memory_mb: int, entry: Path) -> int:
        base = self.check_data_base_mb if entry == self.check_entry else self.data_base_mb
        return self.data_limit_mb or rlimit_data_mb(base, memory_mb)

    def _adopt(self, argv: list[str], env: dict[str, str]) -> trio.Process | None:
        """The process started ahead, if it was started as `argv` would be, with `env` (one
        that was not is killed when the service closes)."""
        early = self._prestarted
        if early is None or early.argv != argv or early.env != env:
            return None
        self._prestarted = None
        return early.adopt()

    async def _lifetime(self, sb: DenoProcess) -> None:
        """One task per process, from start to reaping (`deno_process.lifetime`)."""
        await lifetime(sb, self.exit_reason, self._forget, self.stats)

    def _forget(self, sb: DenoProcess) -> None:
        self._all.discard(sb)
        self.pool.forget(sb)
        if self._checker is sb:
            self._checker = None

    async def _start_for(self, authority: str, memory_mb: int) -> DenoProcess:
        """No sandbox was ready: start one inside the call (a cold start)."""
        self.pool.hurry()
        if memory_mb != self.memory_mb and not self._warned_memory:
            self._warned_memory = True
            log.warning("calls ask for a %d MiB heap, spares have %d MiB: every new authority "
                        "starts cold (give DenoSandbox the kernel's memory_mb)", memory_mb,
                        self.memory_mb)
        sb = await self._start(memory_mb)
        sb.authority = authority
        self.stats["cold_acquires"] += 1
        return sb

    # -- the Sandbox interface -----------------------------------------------------------------

    async def call(self, code: ToolCode, args: Any, host: SyscallHost,
                   limits: CallLimits) -> Any:
        if self._nursery is None:
            await self._service()
        key = self.pool_key(host, code)
        sb = self.pool.take(key, limits.memory_mb)
        if sb is None:
            sb = await self._start_for(key, limits.memory_mb)
        return await self._run(sb, code.name, code.lang, code.hash, code.source, args, host,
                               limits, "call")

    async def _run(self, sb: DenoProcess, tool: str, lang: str, hash_: str,
                   source: bytes | str, args: Any, host: SyscallHost, limits: CallLimits,
                   what: str) -> Any:
        call = DenoCall(next(sb.ids), tool, host, limits)
        try:
            data = b""
            if sb.loaded.get(tool) != hash_ or what != "call":
                if isinstance(source, bytes):
                    source = source.decode("utf-8", errors="strict")
                data += sb.conn.send(LoadTool(tool, lang, hash_, source))
            # A check in the sandbox that will run the tool only imports it (`CheckTool`); the
            # registration checker's own protocol is a call of the loaded tool.
            data += sb.conn.send(CheckTool(call.id, tool) if what == "spare-check"
                                 else Call(call.id, tool, args))
        except (ProtocolError, UnicodeDecodeError) as exc:  # nothing was sent
            if isinstance(exc, UnicodeDecodeError):
                exc = ProtocolError("the source is not UTF-8")
            if sb.conn.broken:
                sb.kill(exc)
            elif what == "call":
                self.pool.release(sb)
            raise InvalidArgument(f"tool {tool}: cannot be sent: {exc.message}") from None
        clean = False
        call.sandbox = sb
        try:
            self._watch(call)
            sb.call = call
            sb.loaded[tool] = hash_
            if sb.dead:
                call.finish(error=sb.death)
            else:
                await write(sb, data)
            await pump(sb, call.ended)
            if sb.dead:
                raise sb.death or SandboxCrashed(f"the sandbox running {tool} died")
            if call.error is None:
                check_output(call)
            clean = True
            if call.error is not None:
                raise call.error
            return call.value
        finally:
            self._watched.discard(call)
            call.cancel_syscalls()
            sb.call = None
            if what != "spare-check":
                self.pool.settled(sb)  # its first call has ended: the next spare may start
            if clean and not sb.dead and not sb.conn.broken:
                if what == "call" or (what == "spare-check" and call.error is None):
                    self.pool.release(sb)  # a checked tool stays loaded for its first call
                elif what == "spare-check":  # a refused module: its sandbox serves nobody
                    sb.kill(SandboxCrashed(f"the check of {tool} failed"))
            else:
                with trio.CancelScope(shield=True):
                    sb.kill(sb.death or SandboxCrashed(f"call of {tool} did not finish"))
                    with trio.move_on_after(5):
                        await sb.gone.wait()

    # -- deadlines ---------------------------------------------------------------------------

    def _watch(self, call: DenoCall) -> None:
        """Put a call under the watchdog, which kills its sandbox at the deadline. (One task
        for all calls: a cancel scope per call costs more than the rest of a warm call.)"""
        self._watched.add(call)
        if call.deadline < self._watch_until:
            self._watch_wakeup.set()

    async def _watchdog(self) -> None:
        while True:
            now = trio.current_time()
            for call in [c for c in self._watched if c.deadline <= now]:
                self._watched.discard(call)
                if call.sandbox is not None and not call.done:
                    call.sandbox.kill(LimitExceeded(
                        f"tool {call.tool} ran past its deadline of {call.limits.deadline} s "
                        "and was killed"))
            self._watch_until = min((c.deadline for c in self._watched), default=math.inf)
            self._watch_wakeup = trio.Event()
            with trio.move_on_at(self._watch_until):
                await self._watch_wakeup.wait()


__all__ = ["CHECK", "MAIN", "RUNTIME_DIR", "DenoSandbox", "deno_flags", "find_deno"]
