"""Frames between the broker and one Deno sandbox process, both ways.

Identity comes from the channel (docs/DESIGN.md, invariant 2): a sandbox process serves one
authority for its whole life and holds at most one call at a time, so every frame it writes
can only be about that call. A frame that names anything else (a call that has ended
included), or is malformed, kills the sandbox and fails the call in flight with
`ProtocolError`; nothing it wrote is attributed anywhere else.

Reading and timing: the task that waits on a sandbox reads its stdout (the call in flight, or
the starter waiting for hello) with os.read on the non-blocking pipe and trio only to wait, and
answers fast syscalls inline (`host.syscall_now`); blocking ones run as tasks of the service
nursery, each bounded by the call's deadline and cancelled when the call ends. Nobody reads an
idle sandbox: a byte it writes while idle kills it before its next call
(`DenoProcess.idle_ok`). (A reader task per sandbox, or a cancel scope per call, each cost
about as much as the rest of a warm call.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import trio

from broker.errors import (
    InvalidArgument,
    LibosError,
    LimitExceeded,
    ProtocolError,
    SandboxCrashed,
    tool_error,
)
from broker.protocol import Error, Hello, Log, Message, Result, Syscall, SyscallResult
from sandboxes.base import WouldBlock
from sandboxes.deno_process import DenoCall, DenoProcess

log = logging.getLogger("libos.sandboxes.deno")

# Frames handled in a row before the reader lets other tasks run (a chunk can hold thousands).
YIELD_EVERY = 16


async def pump(sb: DenoProcess, until: Callable[[], bool]) -> None:
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
                sb.kill(await sb.why_gone())
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
                    await _syscall(sb, _owner(sb, msg), msg)
                else:
                    _on_message(sb, msg)
                busy += 1
                if busy >= YIELD_EVERY:  # a flooding sandbox must not starve the rest
                    busy = 0
                    await trio.lowlevel.checkpoint()
    except ProtocolError as exc:
        sb.kill(ProtocolError(f"the sandbox sent a bad frame and was killed: {exc.message}"))
    except LibosError as exc:
        sb.kill(exc)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        sb.kill(await sb.why_gone())


def _owner(sb: DenoProcess, msg: Syscall | Log | Result | Error) -> DenoCall:
    """The call a frame is about. The Connection only lets through frames for a call in
    flight, and a sandbox holds at most one: anything else is a forgery, refused here and
    never attributed to another call."""
    call = sb.call
    if call is None or msg.id != call.id:
        raise ProtocolError(f"frame for call {msg.id} while "
                            f"{'none' if call is None else call.id} is in flight")
    return call


def _on_message(sb: DenoProcess, msg: Message) -> None:
    if isinstance(msg, Hello):
        if msg.kind != sb.kind:
            raise ProtocolError(f"a {sb.kind} sandbox said it is {msg.kind!r}")
        sb.ready.set()
    elif isinstance(msg, Log):
        call = _owner(sb, msg)
        call.log_bytes += len(msg.text)
        call.host.log(msg.level, msg.text)  # LimitExceeded past the output cap: kill
    elif isinstance(msg, Result):
        _owner(sb, msg).finish(value=msg.value)
    elif isinstance(msg, Error):
        # The tool's own failure: a code only the broker may give becomes TOOL_FAILED.
        _owner(sb, msg).finish(error=tool_error(msg.code, msg.message))
    else:
        raise ProtocolError(f"a sandbox does not send {type(msg).__name__}")


async def _syscall(sb: DenoProcess, call: DenoCall, msg: Syscall) -> None:
    call.syscalls += 1
    host = call.host
    if not host.is_blocking(msg.name):
        try:
            value = host.syscall_now(msg.name, msg.args)
        except WouldBlock:
            pass
        except LibosError as exc:
            await _answer_error(sb, call, msg, exc)
            return
        except Exception as exc:
            log.exception("syscall %s failed in the host", msg.name)
            await _answer_error(sb, call, msg, InvalidArgument(
                f"{msg.name} failed: {type(exc).__name__}"))
            return
        else:
            await _answer(sb, call, msg, value)
            return
    scope = trio.CancelScope(deadline=call.deadline)
    call.scopes.add(scope)
    sb.service.start_soon(_blocking_syscall, sb, call, msg, scope)


async def _blocking_syscall(sb: DenoProcess, call: DenoCall, msg: Syscall,
                            scope: trio.CancelScope) -> None:
    with scope:
        try:
            value = await call.host.syscall(msg.name, msg.args)
        except LibosError as exc:
            await _answer_error(sb, call, msg, exc)
        except Exception as exc:
            log.exception("syscall %s failed in the host", msg.name)
            await _answer_error(sb, call, msg, InvalidArgument(
                f"{msg.name} failed: {type(exc).__name__}"))
        else:
            await _answer(sb, call, msg, value)
        finally:
            call.scopes.discard(scope)


async def _answer(sb: DenoProcess, call: DenoCall, msg: Syscall, value: Any) -> None:
    try:
        data = sb.conn.send(SyscallResult.success(msg.id, msg.seq, value))
    except ProtocolError as exc:  # the value cannot be sent; nothing was
        if sb.conn.broken:
            raise
        data = sb.conn.send(SyscallResult.failure(msg.id, msg.seq, InvalidArgument(
            f"{msg.name}: its result cannot be sent: {exc.message}")))
    await write(sb, data)


async def _answer_error(sb: DenoProcess, call: DenoCall, msg: Syscall,
                        exc: LibosError) -> None:
    if isinstance(exc, LimitExceeded) and (exc.detail.get("ends_call")
                                           or call.syscalls > call.limits.max_syscalls):
        # A syscall cap of the call or its process ends the call; the kernel has audited
        # the refusal.
        sb.kill(exc)
        return
    await write(sb, sb.conn.send(SyscallResult.failure(msg.id, msg.seq, exc)))


async def write(sb: DenoProcess, data: bytes) -> None:
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


def check_output(call: DenoCall) -> None:
    """Past the output cap in bytes read, measure what the call produced (logs and result)."""
    cap = call.limits.max_output_bytes
    if cap and call.bytes_in > cap:
        import msgpack

        size = call.log_bytes + len(msgpack.packb(call.value, use_bin_type=True))
        if size > cap:
            raise LimitExceeded(f"tool {call.tool} produced {size} bytes of output, more "
                                f"than {cap}")
