"""One Deno sandbox process: how it is started (flags, memory cap), the call it holds, and why
it died.

Every sandbox is a `deno run` of an entry point in `ts-runtime/` with no `--allow-*` flag (and
every `--deny-*` flag), `--no-prompt`, remote and npm imports off, no config file, a V8 heap
cap, code generation from strings disallowed, an empty working directory, a minimal
environment and an RLIMIT_DATA cap (V8's heap cap does not bound ArrayBuffers).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from broker.errors import LibosError, LimitExceeded, ProtocolError, SandboxCrashed
from broker.protocol import Connection
from sandboxes.base import CallLimits, SyscallHost

STDERR_TAIL = 8192
# What a sandbox may write on stderr outside any call, over its life: the runtime's own lines
# (a failed warm-up, a fatal frame) are short; a tool's code left running is not.
STDERR_IDLE_BOUND = 1 << 20
OOM_MARKERS = (b"out of memory", b"heap limit", b"allocation failed")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class DenoCall:
    """One call in flight on one sandbox."""

    __slots__ = ("bytes_in", "deadline", "done", "error", "host", "id", "limits", "log_bytes",
                 "sandbox", "scopes", "syscalls", "tool", "value")

    def __init__(self, call_id: int, tool: str, host: SyscallHost, limits: CallLimits) -> None:
        self.id = call_id
        self.tool = tool
        self.host = host
        self.limits = limits
        # Whether it has ended. A flag, not a `trio.Event` (which costs a few µs to make and
        # set): nobody waits on it; the task reading the sandbox checks it after each frame,
        # and a killed sandbox's closed stdout ends that read.
        self.done = False
        self.value: Any = None
        self.error: LibosError | None = None
        self.deadline = trio.current_time() + limits.deadline
        # Blocking syscalls run in the service nursery, each under a scope that ends with the
        # call (its deadline, or cancelled when the call ends however it ends).
        self.scopes: set[trio.CancelScope] = set()
        self.sandbox: DenoProcess | None = None
        self.syscalls = 0
        self.log_bytes = 0
        self.bytes_in = 0

    def finish(self, value: Any = None, error: LibosError | None = None) -> None:
        if not self.done:
            self.value, self.error = value, error
            self.done = True

    def ended(self) -> bool:
        return self.done

    def cancel_syscalls(self) -> None:
        for scope in self.scopes:
            scope.cancel()


class DenoProcess:
    """One Deno process: its channel, the authority it is bound to, the tools it has loaded.

    `kind` is what it must say it is in its hello; `service` is the nursery its blocking
    syscalls run in (the driver's service)."""

    def __init__(self, process: trio.Process, memory_mb: int, entry: Path, kind: str,
                 service: trio.Nursery) -> None:
        self.process = process
        self.stdout_fd = process.stdout.fileno()  # type: ignore[union-attr]
        self.memory_mb = memory_mb
        self.entry = entry
        self.kind = kind
        self.service = service
        self.conn = Connection("broker")
        self.authority: str | None = None
        self.loaded: dict[str, str] = {}
        self.call: DenoCall | None = None
        self.ready = trio.Event()
        self.gone = trio.Event()          # the process has exited and been reaped
        self.stderr_tail = bytearray()
        self.stderr_idle = 0
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

    def cpu_seconds(self) -> float | None:
        """CPU time the process (all its threads) has used, from /proc; None when unknown."""
        try:
            with open(f"/proc/{self.process.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime

    def idle_ok(self) -> bool:
        """An idle sandbox has nothing to say: a byte written while idle (a stray timer, a
        forged frame) or an exit kills it before it is given a call; so do bytes read with
        its last call's last frame, after it (the start of a frame no call asked for)."""
        if self.dead:
            return False
        if self.conn.buffered_bytes:
            self.kill(ProtocolError("the sandbox wrote after its call's last frame"))
            return False
        try:
            data = os.read(self.stdout_fd, 1)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        self.kill(ProtocolError("the sandbox wrote while idle" if data else "stdout closed"))
        return False

    async def why_gone(self) -> LibosError:
        """The sandbox closed its stdout: wait for it to be reaped and say why it died."""
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await self.gone.wait()
        return self.death or SandboxCrashed("the Deno sandbox closed its stdout")

    def keep_stderr(self, chunk: bytes) -> None:
        """Keep the tail of stderr, and count what is read of it: a tool can write there
        (Deno.stderr needs no permission), and the broker reads every byte. A call's stderr
        is its output, under its cap; outside a call, or in a registration's check (no output
        cap: a TypeScript image tool's top-level code wrote 3.8 GB there in 2 s from the
        checker's Worker), `STDERR_IDLE_BOUND` over the process's life. Past either the sandbox
        is killed (`LimitExceeded`)."""
        self.stderr_tail += chunk
        if len(self.stderr_tail) > STDERR_TAIL:
            del self.stderr_tail[:-STDERR_TAIL]
        call = self.call
        # A registration's check has no output cap (0): what it writes counts as idle.
        cap = call.limits.max_output_bytes if call is not None else 0
        if call is not None and cap:
            call.log_bytes += len(chunk)
            if call.log_bytes > cap:
                self.kill(LimitExceeded(f"tool {call.tool} wrote more than {cap} bytes of "
                                        "output (its stderr included)"))
        else:
            self.stderr_idle += len(chunk)
            if self.stderr_idle > STDERR_IDLE_BOUND:
                self.kill(LimitExceeded(f"the sandbox wrote more than {STDERR_IDLE_BOUND} "
                                        "bytes on stderr outside its calls (checks included)"))


def exit_reason(sb: DenoProcess) -> LibosError:
    """Why an exited process died, unless the driver killed it (then `sb.death` says)."""
    if sb.death is not None:
        return sb.death
    rc = sb.process.returncode
    tail = bytes(sb.stderr_tail).lower()
    if any(m in tail for m in OOM_MARKERS) or rc in (-signal.SIGTRAP, -signal.SIGABRT):
        return LimitExceeded(f"the tool exceeded the heap cap of {sb.memory_mb} MiB")
    text = bytes(sb.stderr_tail[-300:]).decode(errors="replace").strip()
    return SandboxCrashed(f"the Deno sandbox exited (code {rc}){': ' + text if text else ''}")


async def lifetime(sb: DenoProcess, why_exited: Callable[[DenoProcess], LibosError],
                   forget: Callable[[DenoProcess], None], stats: dict[str, int]) -> None:
    """A process's task, from start to reaping: it keeps the tail of stderr, then reaps the
    process and says why it died (out of memory, or a crash: `why_exited`) if nobody killed
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
            sb.keep_stderr(chunk)
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
            sb.kill(why_exited(sb))
            stats["killed"] += 1  # (reaped: counted before it is forgotten, as a reader of
            forget(sb)  # the service's processes sees them; the closes below may yield)
            for stream_ in (sb.process.stdin, sb.process.stdout, sb.process.stderr):
                if stream_ is not None:
                    with contextlib.suppress(Exception):
                        await stream_.aclose()
            sb.gone.set()
