"""TypeScript tools in Deno processes that have no permission at all.

Every sandbox is a `deno run` of `ts-runtime/main.ts` with no `--allow-*` flag (and every
`--deny-*` flag), `--no-prompt`, remote and npm imports off, no config file, a V8 heap cap,
code generation from strings disallowed, an empty working directory, a minimal environment
and an RLIMIT_DATA cap (V8's heap cap does not bound ArrayBuffers). It speaks the frame
protocol of `broker.protocol` over its stdin and stdout; everything it may do is a syscall
frame that the kernel checks against the one authority the sandbox belongs to.

Identity comes from the channel (ARCHITECTURE.md, invariant 2): a sandbox process serves one
authority (`SyscallHost.authority`: one process and the chain of manifests narrowing the call)
for its whole life and holds at most one call at a time, so every frame it writes can only be
about that call. A frame that names anything else (a call that has ended included), or is
malformed, kills the sandbox and fails the call in flight with `ProtocolError`; nothing it
wrote is attributed anywhere else.

Limits are enforced by killing the process, never by asking it: the per-call deadline, the
heap cap (V8 aborts; the call gets `LimitExceeded`), the output cap (`host.log` raises) and the
syscall-count cap (the kernel refuses the syscall). Trio cancellation of a call kills its
sandbox inside a shielded scope. A sandbox that dies fails only its call in flight, with
`SandboxCrashed`; the next call gets another one.

Reading and timing: the task that waits on a sandbox reads its stdout (the call in flight, or
the starter waiting for hello) with os.read on the non-blocking pipe and trio only to wait, and
answers fast syscalls inline (`host.syscall_now`); blocking ones run as tasks of the service
nursery, each bounded by the call's deadline and cancelled when the call ends. Nobody reads an
idle sandbox: a byte it writes while idle kills it before its next call. Per process, one
lifetime task keeps the tail of stderr and reaps the exit; one watchdog task kills the
sandboxes of calls past their deadline. (A reader task per sandbox, or a cancel scope per call,
each cost about as much as the rest of a warm call.)

The warm pool: `spares` unbound sandboxes are kept started (hello received), so a call whose
authority has no idle sandbox binds a spare instead of waiting for a process start; after a
call its sandbox goes back to the idle list of its authority (bounded per authority and in
total, least recently used evicted first).

Registration (`prepare`) runs `ts-runtime/check.ts` in another such process, which imports the
tool in a fresh Worker (parsing its TypeScript, evaluating it, finding `run`) and never runs
it; the source is stored unchanged and Deno transpiles it when a sandbox loads it. A checker
checks one tool and is killed (a Worker that spins outlives `terminate()`); the next one
starts meanwhile.

Use it as `async with DenoSandbox() as deno:` (its processes live in that nursery) or hand an
unentered instance to `Kernel.open(sandboxes=[...])`, which then starts its service task on
first use and closes it with the kernel.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from broker.errors import (
    InvalidArgument,
    LibosError,
    LimitExceeded,
    NotCapable,
    ProtocolError,
    SandboxCrashed,
    error_from_wire,
)
from broker.protocol import (
    Call,
    Connection,
    Error,
    Hello,
    LoadTool,
    Log,
    Message,
    Result,
    Syscall,
    SyscallResult,
)
from sandboxes.base import CallLimits, SyscallHost, ToolCode, WouldBlock

try:
    import resource
except ImportError:  # pragma: no cover - not on Linux
    resource = None  # type: ignore[assignment]

log = logging.getLogger("libos.sandboxes.deno")

RUNTIME_DIR = Path(__file__).resolve().parent.parent / "ts-runtime"
MAIN = RUNTIME_DIR / "main.ts"
CHECK = RUNTIME_DIR / "check.ts"

DENY = ("--deny-read", "--deny-write", "--deny-net", "--deny-env", "--deny-run", "--deny-ffi",
        "--deny-sys", "--deny-import")
# What RLIMIT_DATA must leave Deno beyond its heap: it does not start with less than ~600 MiB,
# and the checker, which makes a Worker (another isolate) per check, needs ~1050 MiB.
DATA_BASE_MB = 768
CHECK_DATA_BASE_MB = 1536
STDERR_TAIL = 8192
OOM_MARKERS = (b"out of memory", b"heap limit", b"allocation failed")
# Frames handled in a row before the reader lets other tasks run (a chunk can hold thousands).
YIELD_EVERY = 16


def find_deno() -> str:
    from deno import find_deno_bin

    return str(find_deno_bin())


def deno_flags(memory_mb: int) -> list[str]:
    """The `deno run` flags of every sandbox (the entry point goes after them)."""
    return [
        "run",
        "--no-prompt",
        "--no-remote",
        "--no-npm",
        "--no-config",
        "--no-lock",
        "--quiet",
        *DENY,
        f"--v8-flags=--max-old-space-size={int(memory_mb)},"
        "--disallow-code-generation-from-strings",
    ]


class _Call:
    """One call in flight on one sandbox."""

    __slots__ = ("bytes_in", "deadline", "done", "error", "host", "id", "limits", "log_bytes",
                 "sandbox", "scopes", "syscalls", "tool", "value")

    def __init__(self, call_id: int, tool: str, host: SyscallHost, limits: CallLimits) -> None:
        self.id = call_id
        self.tool = tool
        self.host = host
        self.limits = limits
        self.done = trio.Event()
        self.value: Any = None
        self.error: LibosError | None = None
        self.deadline = trio.current_time() + limits.deadline
        # Blocking syscalls run in the service nursery, each under a scope that ends with the
        # call (its deadline, or cancelled when the call ends however it ends).
        self.scopes: set[trio.CancelScope] = set()
        self.sandbox: _Sandbox | None = None
        self.syscalls = 0
        self.log_bytes = 0
        self.bytes_in = 0

    def finish(self, value: Any = None, error: LibosError | None = None) -> None:
        if not self.done.is_set():
            self.value, self.error = value, error
            self.done.set()

    def cancel_syscalls(self) -> None:
        for scope in self.scopes:
            scope.cancel()


class _Sandbox:
    """One Deno process: its channel, the authority it is bound to, the tools it has loaded."""

    def __init__(self, process: trio.Process, memory_mb: int, entry: Path) -> None:
        self.process = process
        self.stdout_fd = process.stdout.fileno()  # type: ignore[union-attr]
        self.memory_mb = memory_mb
        self.entry = entry
        self.conn = Connection("broker")
        self.authority: str | None = None
        self.loaded: dict[str, str] = {}
        self.call: _Call | None = None
        self.ready = trio.Event()
        self.gone = trio.Event()          # the process has exited and been reaped
        self.stderr_tail = bytearray()
        self.dead = False
        self.death: LibosError | None = None
        self.write_lock = trio.StrictFIFOLock()
        self.ids = itertools.count(1)

    @property
    def key(self) -> tuple[str | None, int]:
        return (self.authority, self.memory_mb)

    def kill(self, why: LibosError) -> None:
        """Kill the process now; the call in flight (if any) fails with `why`."""
        if not self.dead:
            self.dead = True
            self.death = why
        if self.process.returncode is None:
            with contextlib.suppress(OSError):
                self.process.kill()
        if self.call is not None:
            self.call.finish(error=self.death)


class DenoSandbox:
    kind = "deno"
    langs = ("ts",)
    # What a subclass running another entry point (sandboxes/pyodide.py) changes.
    check_entry = CHECK
    data_base_mb = DATA_BASE_MB
    check_data_base_mb = CHECK_DATA_BASE_MB
    # Whether a checker runs a tool's code (TypeScript's imports it in a Worker), so that it
    # checks one tool only. Pyodide's only compiles a tool: it serves every check.
    checker_per_check = True

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
        self._nursery: trio.Nursery | None = None
        self._service_scope: trio.CancelScope | None = None
        self._service_done: trio.Event | None = None
        self._starting_service: trio.Event | None = None
        self._closed = False
        self._tmp: str | None = None
        self._cwd = ""
        self._env: dict[str, str] = {}
        self._all: set[_Sandbox] = set()
        self._idle: dict[tuple[str | None, int], list[_Sandbox]] = {}
        self._lru: OrderedDict[_Sandbox, None] = OrderedDict()
        self._spares: deque[_Sandbox] = deque()
        self._spare_starting = 0
        self._want_spares = trio.Event()
        self._checker: _Sandbox | None = None
        self._watched: set[_Call] = set()
        self._watch_until = math.inf
        self._warned_memory = False
        self._watch_wakeup = trio.Event()
        self._check_lock = trio.Lock()
        self.stats = {"started": 0, "killed": 0, "cold_acquires": 0, "warm_acquires": 0,
                      "spare_acquires": 0}

    # -- the service: a nursery holding every process's lifetime task, the refill, the watchdog

    async def __aenter__(self) -> DenoSandbox:
        self._stack = contextlib.AsyncExitStack()
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        await nursery.start(self._serve)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        await self._stack.__aexit__(None, None, None)

    async def aclose(self) -> None:
        self._closed = True
        if self._service_scope is not None:
            self._service_scope.cancel()
        if self._service_done is not None:
            with trio.CancelScope(shield=True):
                await self._service_done.wait()

    async def _serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self._service_done = trio.Event()
        self._tmp = tempfile.mkdtemp(prefix="libos-deno-")
        self._cwd = os.path.join(self._tmp, "cwd")
        os.mkdir(self._cwd, 0o500)
        deno_dir = os.path.join(self._tmp, "deno-dir")
        os.mkdir(deno_dir, 0o700)
        self._env = {"NO_COLOR": "1", "DENO_DIR": deno_dir, "DENO_NO_UPDATE_CHECK": "1",
                     "DENO_NO_PROMPT": "1", "HOME": self._cwd, "PATH": "/nonexistent"}
        try:
            with trio.CancelScope() as scope:
                self._service_scope = scope
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._refill)
                    nursery.start_soon(self._watchdog)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                for sb in list(self._all):
                    sb.kill(SandboxCrashed("the Deno sandbox service closed"))
                    with trio.move_on_after(2):
                        await sb.process.wait()
                shutil.rmtree(self._tmp, ignore_errors=True)
            self._service_done.set()

    async def _system_serve(self, started: trio.Event) -> None:
        # The fallback when nobody entered us: a system task owns the nursery. It must never
        # raise (that would crash the trio run), so it logs instead.
        try:
            await self._serve(_Started(started))
        except Exception:
            log.exception("the Deno sandbox service failed")
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
        """Wait until the spares and the registration checker are started."""
        await self._service()
        with trio.fail_after(self.startup_timeout):
            while len(self._spares) < self.spares:
                self._want_spares.set()
                await trio.sleep(0.005)
        async with self._check_lock:
            if self._checker is None or self._checker.dead:
                self._checker = await self._start(self.memory_mb, self.check_entry)

    # -- processes -----------------------------------------------------------------------------

    def _argv(self, memory_mb: int, entry: Path) -> list[str]:
        return [self.deno, *deno_flags(memory_mb), str(entry)]

    async def _start(self, memory_mb: int, entry: Path | None = None) -> _Sandbox:
        nursery = await self._service()
        entry = entry or self.runtime
        try:
            process = await trio.lowlevel.open_process(
                self._argv(memory_mb, entry), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, cwd=self._cwd, env=self._env, start_new_session=True)
        except OSError as exc:
            raise SandboxCrashed(f"cannot start Deno: {exc}") from None
        self._limit_memory(process.pid, memory_mb, entry == self.check_entry)
        sb = _Sandbox(process, memory_mb, entry)
        self._all.add(sb)
        self.stats["started"] += 1
        nursery.start_soon(self._lifetime, sb, name=f"libos-deno-{process.pid}")
        try:
            with trio.move_on_after(self.startup_timeout):
                await self._pump(sb, sb.ready.is_set)
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

    def _limit_memory(self, pid: int, memory_mb: int, checker: bool) -> None:
        if resource is None or not hasattr(resource, "prlimit"):
            return
        base = self.check_data_base_mb if checker else self.data_base_mb
        mb = self.data_limit_mb or (base + 2 * memory_mb)
        with contextlib.suppress(OSError, ValueError):
            resource.prlimit(pid, resource.RLIMIT_DATA, (mb << 20, mb << 20))

    async def _lifetime(self, sb: _Sandbox) -> None:
        """One task per process, from start to reaping: it keeps the tail of stderr, then
        reaps the process and says why it died (out of memory, or a crash) if nobody killed
        it. Cancelled (the service closing), it kills the process first."""
        stream = sb.process.stderr
        assert stream is not None
        eof = False
        try:
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    eof = True
                    break
                sb.stderr_tail += chunk
                if len(sb.stderr_tail) > STDERR_TAIL:
                    del sb.stderr_tail[:-STDERR_TAIL]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                if not eof:
                    sb.kill(sb.death or SandboxCrashed("the Deno sandbox service closed"))
                with trio.move_on_after(5) as waited:
                    await sb.process.wait()
                if waited.cancelled_caught:  # stderr closed, yet the process lives on
                    sb.kill(sb.death or SandboxCrashed("the sandbox closed its stderr"))
                    await sb.process.wait()
                sb.kill(self._why_dead(sb))
                self._forget(sb)
                for stream_ in (sb.process.stdin, sb.process.stdout, sb.process.stderr):
                    if stream_ is not None:
                        with contextlib.suppress(Exception):
                            await stream_.aclose()
                self.stats["killed"] += 1
                sb.gone.set()

    async def _pump(self, sb: _Sandbox, until: Callable[[], bool]) -> None:
        """Read and handle the sandbox's frames until `until()` or its death.

        The task waiting on the sandbox reads for it (the call in flight, or the starter
        waiting for hello): no reader task hop between a frame and its handling, and fast
        syscalls are answered right here. Nobody reads an idle sandbox; what it writes while
        idle is found (and the sandbox killed) before its next call."""
        fd = sb.stdout_fd
        busy = 0
        try:
            while not until() and not sb.dead:
                # os.read on the non-blocking pipe, waiting through trio only when it is empty
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    busy = 0
                    await trio.lowlevel.wait_readable(fd)
                    continue
                if not chunk:
                    sb.kill(await self._why_gone(sb))
                    return
                call = sb.call
                if call is not None:
                    call.bytes_in += len(chunk)
                sb.conn.receive_data(chunk)
                while not sb.dead:
                    msg = sb.conn.next_event()
                    if msg is None:
                        break
                    if type(msg) is Syscall:
                        await self._syscall(sb, self._owner(sb, msg), msg)
                    else:
                        self._on_message(sb, msg)
                    busy += 1
                    if busy >= YIELD_EVERY:  # a flooding sandbox must not starve the rest
                        busy = 0
                        await trio.lowlevel.checkpoint()
        except ProtocolError as exc:
            sb.kill(ProtocolError(f"the sandbox sent a bad frame and was killed: {exc.message}"))
        except LibosError as exc:
            sb.kill(exc)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            sb.kill(await self._why_gone(sb))

    def _idle_ok(self, sb: _Sandbox) -> bool:
        """An idle sandbox has nothing to say: a byte written while idle (a stray timer, a
        forged frame) or an exit kills it before it is given a call."""
        if sb.dead:
            return False
        try:
            data = os.read(sb.stdout_fd, 1)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        sb.kill(ProtocolError("the sandbox wrote while idle" if data else "stdout closed"))
        return False

    async def _why_gone(self, sb: _Sandbox) -> LibosError:
        """The sandbox closed its stdout: wait for it to be reaped and say why it died."""
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await sb.gone.wait()
        return sb.death or SandboxCrashed("the Deno sandbox closed its stdout")

    @staticmethod
    def _why_dead(sb: _Sandbox) -> LibosError:
        """Why an exited process died, unless the driver killed it (then `sb.death` says)."""
        if sb.death is not None:
            return sb.death
        rc = sb.process.returncode
        tail = bytes(sb.stderr_tail).lower()
        if any(m in tail for m in OOM_MARKERS) or rc in (-signal.SIGTRAP, -signal.SIGABRT):
            return LimitExceeded(f"the tool exceeded the heap cap of {sb.memory_mb} MiB")
        text = bytes(sb.stderr_tail[-300:]).decode(errors="replace").strip()
        return SandboxCrashed(f"the Deno sandbox exited (code {rc}){': ' + text if text else ''}")

    def _forget(self, sb: _Sandbox) -> None:
        self._all.discard(sb)
        self._lru.pop(sb, None)
        idle = self._idle.get(sb.key)
        if idle and sb in idle:
            idle.remove(sb)
        if sb in self._spares:
            self._spares.remove(sb)
            self._want_spares.set()
        if self._checker is sb:
            self._checker = None

    # -- frames from a sandbox ---------------------------------------------------------------

    @staticmethod
    def _owner(sb: _Sandbox, msg: Syscall | Log | Result | Error) -> _Call:
        """The call a frame is about. The Connection only lets through frames for a call in
        flight, and a sandbox holds at most one: anything else is a forgery, refused here and
        never attributed to another call."""
        call = sb.call
        if call is None or msg.id != call.id:
            raise ProtocolError(f"frame for call {msg.id} while "
                                f"{'none' if call is None else call.id} is in flight")
        return call

    def _on_message(self, sb: _Sandbox, msg: Message) -> None:
        if isinstance(msg, Hello):
            if msg.kind != self.kind:
                raise ProtocolError(f"a {self.kind} sandbox said it is {msg.kind!r}")
            sb.ready.set()
        elif isinstance(msg, Log):
            call = self._owner(sb, msg)
            call.log_bytes += len(msg.text)
            call.host.log(msg.level, msg.text)  # LimitExceeded past the output cap: kill
        elif isinstance(msg, Result):
            self._owner(sb, msg).finish(value=msg.value)
        elif isinstance(msg, Error):
            self._owner(sb, msg).finish(error=error_from_wire(msg.code, msg.message))
        else:
            raise ProtocolError(f"a sandbox does not send {type(msg).__name__}")

    async def _syscall(self, sb: _Sandbox, call: _Call, msg: Syscall) -> None:
        call.syscalls += 1
        host = call.host
        if not host.is_blocking(msg.name):
            try:
                value = host.syscall_now(msg.name, msg.args)
            except WouldBlock:
                pass
            except LibosError as exc:
                await self._answer_error(sb, call, msg, exc)
                return
            except Exception as exc:
                log.exception("syscall %s failed in the host", msg.name)
                await self._answer_error(sb, call, msg, InvalidArgument(
                    f"{msg.name} failed: {type(exc).__name__}"))
                return
            else:
                await self._answer(sb, call, msg, value)
                return
        scope = trio.CancelScope(deadline=call.deadline)
        call.scopes.add(scope)
        assert self._nursery is not None
        self._nursery.start_soon(self._blocking_syscall, sb, call, msg, scope)

    async def _blocking_syscall(self, sb: _Sandbox, call: _Call, msg: Syscall,
                                scope: trio.CancelScope) -> None:
        with scope:
            try:
                value = await call.host.syscall(msg.name, msg.args)
            except LibosError as exc:
                await self._answer_error(sb, call, msg, exc)
            except Exception as exc:
                log.exception("syscall %s failed in the host", msg.name)
                await self._answer_error(sb, call, msg, InvalidArgument(
                    f"{msg.name} failed: {type(exc).__name__}"))
            else:
                await self._answer(sb, call, msg, value)
            finally:
                call.scopes.discard(scope)

    async def _answer(self, sb: _Sandbox, call: _Call, msg: Syscall, value: Any) -> None:
        try:
            data = sb.conn.send(SyscallResult.success(msg.id, msg.seq, value))
        except ProtocolError as exc:  # the value cannot be sent; nothing was
            if sb.conn.broken:
                raise
            data = sb.conn.send(SyscallResult.failure(msg.id, msg.seq, InvalidArgument(
                f"{msg.name}: its result cannot be sent: {exc.message}")))
        await self._write(sb, data)

    async def _answer_error(self, sb: _Sandbox, call: _Call, msg: Syscall,
                            exc: LibosError) -> None:
        if isinstance(exc, LimitExceeded) and (exc.detail.get("ends_call")
                                               or call.syscalls > call.limits.max_syscalls):
            # A syscall cap of the call or its process ends the call; the kernel has audited
            # the refusal.
            sb.kill(exc)
            return
        await self._write(sb, sb.conn.send(SyscallResult.failure(msg.id, msg.seq, exc)))

    async def _write(self, sb: _Sandbox, data: bytes) -> None:
        stream = sb.process.stdin
        assert stream is not None
        try:
            if not sb.write_lock.locked():
                # Straight into the pipe when nobody is mid-write (the hot path); whatever
                # does not fit goes through the lock, which keeps frames whole and in order.
                try:
                    n = os.write(stream.fileno(), data)
                except BlockingIOError:
                    n = 0
                if n == len(data):
                    return
                data = data[n:]
            async with sb.write_lock:
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            sb.kill(sb.death or SandboxCrashed("the sandbox stopped reading"))

    # -- the pool ----------------------------------------------------------------------------

    async def _refill(self) -> None:
        while True:
            while len(self._spares) + self._spare_starting < self.spares and not self._closed:
                self._spare_starting += 1
                try:
                    sb = await self._start(self.memory_mb)
                except Exception as exc:  # never let the service die of it: calls start cold
                    log.warning("could not start a spare Deno sandbox: %s", exc)
                    await trio.sleep(1)
                    continue
                finally:
                    self._spare_starting -= 1
                self._spares.append(sb)
            self._want_spares = trio.Event()
            await self._want_spares.wait()

    def _take(self, authority: str, memory_mb: int) -> _Sandbox | None:
        """An idle sandbox of this authority, else a ready spare bound to it, else None."""
        idle = self._idle.get((authority, memory_mb))
        while idle:
            sb = idle.pop()
            self._lru.pop(sb, None)
            if self._idle_ok(sb):
                self.stats["warm_acquires"] += 1
                return sb
        if memory_mb == self.memory_mb:
            while self._spares:
                sb = self._spares.popleft()
                self._want_spares.set()
                if self._idle_ok(sb):
                    sb.authority = authority
                    self.stats["spare_acquires"] += 1
                    return sb
        return None

    async def _start_for(self, authority: str, memory_mb: int) -> _Sandbox:
        """No sandbox was ready: start one inside the call (a cold start)."""
        self._want_spares.set()
        if memory_mb != self.memory_mb and not self._warned_memory:
            self._warned_memory = True
            log.warning("calls ask for a %d MiB heap, spares have %d MiB: every new authority "
                        "starts cold (give DenoSandbox the kernel's memory_mb)", memory_mb,
                        self.memory_mb)
        sb = await self._start(memory_mb)
        sb.authority = authority
        self.stats["cold_acquires"] += 1
        return sb

    def _release(self, sb: _Sandbox) -> None:
        if sb.dead or self._closed:
            return
        idle = self._idle.setdefault(sb.key, [])
        if len(idle) >= self.max_idle_per_authority:
            sb.kill(SandboxCrashed("evicted"))
            return
        idle.append(sb)
        self._lru[sb] = None
        while len(self._lru) > self.max_idle:
            oldest, _ = self._lru.popitem(last=False)
            self._idle[oldest.key].remove(oldest)
            oldest.kill(SandboxCrashed("evicted"))

    # -- the Sandbox interface -----------------------------------------------------------------

    async def prepare(self, name: str, lang: str, source: bytes) -> bytes:
        if lang not in self.langs:
            raise InvalidArgument(f"the Deno sandbox runs {self.langs}, not {lang!r}")
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"tool {name}: source is not UTF-8") from None
        limits = CallLimits(deadline=self.check_timeout + 2.0, max_syscalls=0,
                            max_output_bytes=0, memory_mb=self.memory_mb)
        async with self._check_lock:
            for attempt in (1, 2):
                checker = self._checker
                if checker is None or not self._idle_ok(checker):
                    checker = self._checker = await self._start(self.memory_mb, self.check_entry)
                try:
                    await self._run(checker, name, lang, "sha256:-", text, {
                        "timeout_ms": int(self.check_timeout * 1000)}, _NoHost(), limits,
                        "check")
                    break
                except InvalidArgument:
                    raise
                except LibosError as exc:
                    # A checker can die of an earlier check (a Worker that ran out of memory
                    # as it was terminated): a death is only this tool's fault twice running.
                    if attempt == 1 and checker.dead:
                        continue
                    raise InvalidArgument(
                        f"tool {name} could not be checked: {exc.message}") from None
                finally:
                    if self.checker_per_check:
                        self._retire_checker(checker)
        return source

    def _retire_checker(self, checker: _Sandbox) -> None:
        """Kill a checker that has checked a tool, and start the next one meanwhile: the
        tool's top-level code ran in a Worker of it, and a Worker that spins (a loop at the
        top level, or one a timer starts as the check answers) outlives `terminate()`, holding
        a CPU for as long as the checker lives."""
        checker.kill(SandboxCrashed("a checker checks one tool"))
        if self._checker is checker:
            self._checker = None
        if self._nursery is not None and not self._closed:
            self._nursery.start_soon(self._next_checker)

    async def _next_checker(self) -> None:
        async with self._check_lock:
            if self._checker is None or self._checker.dead:
                try:
                    self._checker = await self._start(self.memory_mb, self.check_entry)
                except LibosError as exc:  # the next check starts one itself
                    log.warning("could not start a checker: %s", exc.message)

    def _pool_key(self, host: SyscallHost, code: ToolCode) -> str:
        """What a sandbox serving this call is bound to for its whole life: the call's
        authority. Tools of one authority share sandboxes: the runtime hardens the realm
        (ts-runtime/lockdown.ts), so what one call leaves cannot reach another's syscalls."""
        return host.authority

    async def call(self, code: ToolCode, args: Any, host: SyscallHost,
                   limits: CallLimits) -> Any:
        if self._nursery is None:
            await self._service()
        key = self._pool_key(host, code)
        sb = self._take(key, limits.memory_mb)
        if sb is None:
            sb = await self._start_for(key, limits.memory_mb)
        return await self._run(sb, code.name, code.lang, code.hash, code.source, args, host,
                               limits, "call")

    async def _run(self, sb: _Sandbox, tool: str, lang: str, hash_: str,
                   source: bytes | str, args: Any, host: SyscallHost, limits: CallLimits,
                   what: str) -> Any:
        call = _Call(next(sb.ids), tool, host, limits)
        try:
            data = b""
            if sb.loaded.get(tool) != hash_ or what == "check":
                if isinstance(source, bytes):
                    source = source.decode("utf-8", errors="strict")
                data += sb.conn.send(LoadTool(tool, lang, hash_, source))
            data += sb.conn.send(Call(call.id, tool, args))
        except (ProtocolError, UnicodeDecodeError) as exc:  # nothing was sent
            if isinstance(exc, UnicodeDecodeError):
                exc = ProtocolError("the source is not UTF-8")
            if sb.conn.broken:
                sb.kill(exc)
            elif what == "call":
                self._release(sb)
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
                await self._write(sb, data)
            await self._pump(sb, call.done.is_set)
            if sb.dead:
                raise sb.death or SandboxCrashed(f"the sandbox running {tool} died")
            if call.error is None:
                self._check_output(call)
            clean = True
            if call.error is not None:
                raise call.error
            return call.value
        finally:
            self._watched.discard(call)
            call.cancel_syscalls()
            sb.call = None
            if clean and not sb.dead and not sb.conn.broken:
                if what == "call":
                    self._release(sb)
            else:
                with trio.CancelScope(shield=True):
                    sb.kill(sb.death or SandboxCrashed(f"call of {tool} did not finish"))
                    with trio.move_on_after(5):
                        await sb.gone.wait()

    # -- deadlines ---------------------------------------------------------------------------

    def _watch(self, call: _Call) -> None:
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
                if call.sandbox is not None and not call.done.is_set():
                    call.sandbox.kill(LimitExceeded(
                        f"tool {call.tool} ran past its deadline of {call.limits.deadline} s "
                        "and was killed"))
            self._watch_until = min((c.deadline for c in self._watched), default=math.inf)
            self._watch_wakeup = trio.Event()
            with trio.move_on_at(self._watch_until):
                await self._watch_wakeup.wait()

    def _check_output(self, call: _Call) -> None:
        cap = call.limits.max_output_bytes
        if cap and call.bytes_in > cap:
            import msgpack

            size = call.log_bytes + len(msgpack.packb(call.value, use_bin_type=True))
            if size > cap:
                raise LimitExceeded(f"tool {call.tool} produced {size} bytes of output, more "
                                    f"than {cap}")


class _Started:
    """task_status for a service started outside a nursery."""

    def __init__(self, event: trio.Event) -> None:
        self._event = event

    def started(self, value: Any = None) -> None:
        self._event.set()


class _NoHost:
    """The checker's host: it serves no process, so it has no syscalls and drops logs."""

    pid = 0
    invocation_id = 0
    tool = "check"
    authority = "<checker>"

    async def syscall(self, name: str, args: Any) -> Any:
        raise NotCapable("the registration checker has no syscalls")

    def syscall_now(self, name: str, args: Any) -> Any:
        raise NotCapable("the registration checker has no syscalls")

    def is_blocking(self, name: str) -> bool:
        return False

    def log(self, level: str, text: str) -> None:
        pass


__all__ = ["DenoSandbox", "deno_flags", "find_deno"]
