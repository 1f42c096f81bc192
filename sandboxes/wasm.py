"""WebAssembly tools in Wasmtime: nothing but the `libos` host functions.

One `Engine` (fuel and epoch interruption on; threads, memory64, GC and the component model
off) per sandbox. A module is compiled once per content hash, checked (imports only from
`libos`, the ABI's exports), and its compiled artefact is written to a cache directory so a
restarted broker loads it instead of compiling again. Each call gets a fresh `Store` and a
fresh instance with its own fuel, epoch deadline and memory/table/instance limits, so no
state survives between calls. The guest ABI is `wasm-tools/ABI.md`.

Where a call runs. Handing a call to a worker thread and back costs tens of microseconds
(`trio.to_thread.run_sync`, 40-80 µs here), more than a short call itself. So a call first
runs *inline* on the trio thread with a small slice of fuel, wall time and memory (see
`_run`). If it finishes within the slice, that was the whole call. If it needs more (its
slice ran out, or it made a syscall that must wait), the inline attempt is abandoned and the
call is re-run from the
start in a worker thread; syscalls the abandoned attempt made are *not* made again: the
re-run is fed their recorded responses, in order (wasm is deterministic given its inputs, and
a re-run that asks for something else is stopped). So the trio loop is held by one call for
at most one slice, and every effect happens once. After an abandoned attempt, a module's
next calls go straight to a thread: 1, then 2, 4, ... up to 1024 calls for each further
abandoned attempt, halving again with each attempt that finishes inline.

While a call runs in a worker thread, a ticker thread bumps the engine's epoch every `tick`
seconds; the store's epoch callback then checks the wall-clock deadline (which counts time in
host calls too) and cancellation of the trio task awaiting the call
(`trio.from_thread.check_cancelled`), and ends the call if either has come. So cancelling
that task stops the wasm within a tick (or its blocking syscall at once), and the task
returns only after its thread has: no thread is left running.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import trio
import wasmtime

from broker.errors import (
    Cancelled,
    InvalidArgument,
    LibosError,
    LimitExceeded,
    ProtocolError,
    SandboxCrashed,
    error_from_wire,
)
from broker.protocol import Limits, decode_body
from sandboxes import wasm_ffi as F
from sandboxes import wasm_guest
from sandboxes.base import CallLimits, SyscallHost, ToolCode, WouldBlock

log = logging.getLogger("libos.sandboxes.wasm")

M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF
PAGE = 65536
WASM_MAGIC = b"\0asm\x01\0\0\0"

LOG_LEVELS = ("debug", "info", "warn", "error")
MAX_BACKOFF = 1024  # most calls a module skips its inline attempt for, after abandoned ones
MAX_ERROR_MESSAGE = 4096

# The ABI: what a module may import (all from `libos`, each optional) and must export.
I32, I64 = "i32", "i64"
HOST_FUNCS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "syscall": ((I32, I32), (I64,)),
    "log": ((I32, I32, I32), (I32,)),
    "fail": ((I32, I32, I32, I32), ()),
}
EXPORT_FUNCS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "alloc": ((I32,), (I32,)),
    "run": ((I32, I32), (I64,)),
}


def _s32(v: int) -> int:
    v &= M32
    return v - (1 << 32) if v & 0x8000_0000 else v


def _s64(v: int) -> int:
    v &= M64
    return v - (1 << 64) if v & (1 << 63) else v


def _valtypes(types: Any) -> tuple[str, ...]:
    return tuple(str(t) for t in types)


def _trap_text(message: str) -> str:
    """The cause line of a wasmtime trap or error message, without the backtrace."""
    if "Caused by:" in message:
        tail = message.split("Caused by:", 1)[1]
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
        if lines:
            return " / ".join(lines)[:500]
    return message.strip().splitlines()[0][:500] if message.strip() else "trap"


class _Restart(Exception):
    """The inline attempt must be abandoned and the call re-run in a worker thread."""


class _Stop(Exception):
    """Raised inside a host function: end the call with `reason`."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


@dataclass(slots=True)
class _Entry:
    """A compiled module ready to instantiate."""

    hash: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre
    # After an abandoned inline attempt, the next `skip` calls go straight to a thread;
    # `backoff` doubles with each abandoned attempt and halves with each inline success.
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


@dataclass(slots=True)
class _Call:
    """One call in progress; host functions find it through a thread-local."""

    host: SyscallHost
    limits: CallLimits
    deadline: float                     # time.monotonic()
    inline: bool
    inline_deadline: float = 0.0        # time.perf_counter(), inline attempts only
    fuel: int = 0
    memory_limit: int = 0
    capped: bool = False                # an inline attempt with less memory than the call
    final_memory: int = 0
    ctx: Any = None
    memory: Any = None
    alloc: Any = None
    stop: BaseException | None = None
    cancelled: bool = False
    syscalls: int = 0
    output: int = 0
    logs: list[tuple[str, str]] = field(default_factory=list)
    # (request region or bytes, response) of each syscall answered by the inline attempt,
    # and, in the re-run, how many of them have been replayed.
    record: list[tuple[Any, bytes]] = field(default_factory=list)
    replay: list[tuple[Any, bytes]] = field(default_factory=list)
    replayed: int = 0

    def time_up(self) -> BaseException | None:
        if not self.inline and not self.cancelled:
            try:
                trio.from_thread.check_cancelled()
            except trio.Cancelled:
                self.cancelled = True
            except RuntimeError:
                pass  # not in a trio worker thread (only a direct, synchronous `_run`)
        if self.cancelled:
            return Cancelled("the call was cancelled")
        if time.monotonic() >= self.deadline:
            return LimitExceeded(f"wasm tool ran past its deadline of {self.limits.deadline} s")
        if self.inline and time.perf_counter() >= self.inline_deadline:
            return _Restart("inline slice spent")
        return None

    def end(self, reason: BaseException) -> None:
        if self.stop is None:
            self.stop = reason


_tls = threading.local()


@F.EpochCallback
def _on_epoch(ctx: Any, data: Any, delta: Any, kind: Any) -> int:
    try:
        call = getattr(_tls, "call", None)
        if call is None:
            return F.new_error("epoch deadline outside a call")
        reason = call.time_up()
        if reason is not None:
            call.end(reason)
            return F.new_error(str(reason))
        return F.continue_for(delta, kind, 1)
    except BaseException:  # never let an exception cross the C boundary
        return F.new_error("epoch callback failed")


def _trap(call: _Call | None, exc: BaseException, host_function: str) -> Any:
    """End the call for what went wrong inside a host function and return the trap that
    unwinds the guest: the call's own typed error for a `_Stop`, else `SandboxCrashed`.
    Nothing may cross the C boundary as a Python exception."""
    if isinstance(exc, _Stop):
        reason: LibosError = exc.reason  # type: ignore[assignment]
        message = str(reason)
    else:
        log.error("wasm %s host function failed", host_function, exc_info=exc)
        reason = SandboxCrashed(f"host function failed: {type(exc).__name__}")
        message = "host function failed"
    if call is not None:
        call.end(reason)
    return F.new_trap(message)


class _Ticker:
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


class WasmSandbox:
    """The `Sandbox` for `wat` and `wasm` tools."""

    kind = "wasm"
    langs = ("wat", "wasm")

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        inline: bool = True,
        inline_fuel: int = 1_000_000,
        inline_seconds: float = 0.002,
        inline_memory_mb: int = 16,
        tick: float = 0.01,
        max_module_bytes: int = 1 << 20,
        max_message_bytes: int = 4 << 20,
        max_wasm_stack: int = 512 << 10,
        max_table_elements: int = 10_000,
        max_tables: int = 4,
    ) -> None:
        self.inline = inline
        self.inline_fuel = inline_fuel
        self.inline_seconds = inline_seconds
        self.inline_memory_mb = inline_memory_mb
        self.tick = tick
        self.max_module_bytes = max_module_bytes
        self.max_message_bytes = max_message_bytes
        self.max_wasm_stack = max_wasm_stack
        self.max_table_elements = max_table_elements
        self.max_tables = max_tables
        self._decode_limits = Limits(max_frame_bytes=max_message_bytes,
                                     max_str_len=max_message_bytes,
                                     max_bin_len=max_message_bytes)
        self.stats = {"compiled": 0, "loaded": 0, "inline": 0, "threaded": 0, "restarted": 0}
        self._engine = self._make_engine(max_wasm_stack)
        self._linker = wasmtime.Linker(self._engine)
        # Host functions are defined once, per engine (their FuncTypes are never shared
        # with another engine); the callbacks must stay referenced as long as the linker.
        self._callbacks = {
            "syscall": F.HostCallback(self._host_syscall),
            "log": F.HostCallback(self._host_log),
            "fail": F.HostCallback(self._host_fail),
        }
        for name, (params, results) in HOST_FUNCS.items():
            ty = wasmtime.FuncType([self._valtype(p) for p in params],
                                   [self._valtype(r) for r in results])
            F.define_host(self._linker, "libos", name, ty, self._callbacks[name])
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._ticker = _Ticker(self._engine, tick)
        self._closed = False
        self.cache_dir = self._cache_dir(cache_dir)

    # -- setup ------------------------------------------------------------------------------

    @staticmethod
    def _valtype(name: str) -> wasmtime.ValType:
        return wasmtime.ValType.i32() if name == I32 else wasmtime.ValType.i64()

    @staticmethod
    def _make_engine(max_wasm_stack: int) -> wasmtime.Engine:
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        cfg.epoch_interruption = True
        cfg.max_wasm_stack = max_wasm_stack
        # Only what a tool needs: no shared memory or threads, no 64-bit or multiple
        # memories (the ABI's pointers are 32-bit), no GC heap outside linear memory (the
        # store's memory limit would not cover it), no components, exceptions or stack
        # switching. Relaxed SIMD is made deterministic, so a re-run computes what the
        # inline attempt computed.
        cfg.wasm_threads = False
        cfg.shared_memory = False
        cfg.wasm_memory64 = False
        cfg.wasm_multi_memory = False
        cfg.wasm_gc = False
        cfg.wasm_function_references = False
        cfg.wasm_exceptions = False
        cfg.gc_support = False
        cfg.wasm_component_model = False
        cfg.wasm_stack_switching = False
        cfg.wasm_relaxed_simd_deterministic = True
        return wasmtime.Engine(cfg)

    def _fingerprint(self) -> str:
        settings = f"wasmtime-50;stack={self.max_wasm_stack};fuel;epoch;v1"
        return hashlib.sha256(settings.encode()).hexdigest()[:16]

    def _cache_dir(self, cache_dir: str | os.PathLike[str] | None) -> Path | None:
        if cache_dir is None:
            return None
        path = Path(cache_dir) / f"modules-{self._fingerprint()}"
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    # -- registration -----------------------------------------------------------------------

    async def prepare(self, name: str, lang: str, source: bytes) -> bytes:
        """Check a tool at registration: WAT text (with the libos prelude expanded) or a
        binary module; its imports and exports must follow the ABI. Returns the module's
        bytes, which are what the kernel stores and what `call` gets back."""
        if lang not in self.langs:
            raise InvalidArgument(f"the wasm sandbox does not run {lang!r} tools")
        if not isinstance(source, bytes | bytearray) or not source:
            raise InvalidArgument("a wasm tool needs a non-empty source")
        if len(source) > self.max_module_bytes:
            raise InvalidArgument(f"tool source is over {self.max_module_bytes} bytes")
        self._check_open()
        wasm = await trio.to_thread.run_sync(self._to_wasm, lang, bytes(source))
        await trio.to_thread.run_sync(self._load, hashlib.sha256(wasm).hexdigest(), wasm)
        return wasm

    def _to_wasm(self, lang: str, source: bytes) -> bytes:
        if lang == "wat":
            try:
                text = source.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument("WAT source must be UTF-8 text") from None
            if text.lstrip().startswith("\0"):
                raise InvalidArgument("WAT source looks binary; register it as wasm")
            try:
                wasm = bytes(wasmtime.wat2wasm(wasm_guest.expand(text)))
            except wasmtime.WasmtimeError as exc:
                raise InvalidArgument(f"WAT does not assemble: {str(exc)[:1000]}") from None
        else:
            wasm = source
            if not wasm.startswith(WASM_MAGIC):
                raise InvalidArgument("not a WebAssembly core module (bad magic or version)")
        if len(wasm) > self.max_module_bytes:
            raise InvalidArgument(f"module is over {self.max_module_bytes} bytes")
        return wasm

    def _check_module(self, module: wasmtime.Module) -> None:
        """Imports only the `libos` host functions, with their exact types; exports the
        ABI's memory and functions."""
        for imp in module.imports:
            want = HOST_FUNCS.get(imp.name) if imp.module == "libos" else None
            ty = imp.type
            if want is None or not isinstance(ty, wasmtime.FuncType):
                raise InvalidArgument(
                    f"module imports {imp.module}.{imp.name}: a wasm tool may import only "
                    f"the libos functions {sorted(HOST_FUNCS)}")
            if (_valtypes(ty.params), _valtypes(ty.results)) != want:
                raise InvalidArgument(f"libos.{imp.name} has the wrong type; the ABI says "
                                      f"{want[0]} -> {want[1]}")
        exports = {e.name: e.type for e in module.exports}
        memory = exports.get("memory")
        if not isinstance(memory, wasmtime.MemoryType):
            raise InvalidArgument("a wasm tool must export its linear memory as 'memory'")
        if memory.is_64 or memory.is_shared or memory.page_size != PAGE:
            raise InvalidArgument("'memory' must be a 32-bit, unshared memory of 64 KiB pages")
        for name, want in EXPORT_FUNCS.items():
            ty = exports.get(name)
            if not isinstance(ty, wasmtime.FuncType) or (
                    _valtypes(ty.params), _valtypes(ty.results)) != want:
                raise InvalidArgument(f"a wasm tool must export {name}: {want[0]} -> {want[1]}")

    def _load(self, digest: str, wasm: bytes) -> _Entry:
        """The entry for a module: from memory, else from the artefact cache, else compiled
        (and its artefact cached). Runs in a worker thread."""
        entry = self._entries.get(digest)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                return entry
            module = self._deserialize(digest)
            if module is None:
                try:
                    module = wasmtime.Module(self._engine, wasm)
                except wasmtime.WasmtimeError as exc:
                    raise InvalidArgument(f"invalid module: {_trap_text(str(exc))}") from None
                self._check_module(module)
                self.stats["compiled"] += 1
                self._serialize(digest, module)
            else:
                self._check_module(module)
                self.stats["loaded"] += 1
            try:
                pre = self._linker.instantiate_pre(module)
            except wasmtime.WasmtimeError as exc:
                raise InvalidArgument(f"cannot link module: {_trap_text(str(exc))}") from None
            entry = self._entries[digest] = _Entry(digest, module, pre)
            return entry

    def _artefact(self, digest: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{digest}.cwasm"

    def _deserialize(self, digest: str) -> wasmtime.Module | None:
        path = self._artefact(digest)
        if path is None or not path.is_file():
            return None
        try:
            return wasmtime.Module.deserialize_file(self._engine, str(path))
        except wasmtime.WasmtimeError as exc:
            # Another wasmtime build or configuration, or a damaged file: compile again.
            log.warning("discarding cached module %s: %s", path.name, _trap_text(str(exc)))
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def _serialize(self, digest: str, module: wasmtime.Module) -> None:
        path = self._artefact(digest)
        if path is None:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(module.serialize())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache module %s: %s", digest, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    async def _entry(self, code: ToolCode) -> _Entry:
        entry = self._entries.get(code.hash)
        if entry is not None:
            return entry
        if hashlib.sha256(code.source).hexdigest() != code.hash:
            raise SandboxCrashed(f"tool {code.name}: stored module does not match its hash")
        return await trio.to_thread.run_sync(self._load, code.hash, code.source)

    # -- calls ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxCrashed("the wasm sandbox is closed")

    async def call(self, code: ToolCode, args: Any, host: SyscallHost,
                   limits: CallLimits) -> Any:
        self._check_open()
        deadline = time.monotonic() + limits.deadline
        entry = await self._entry(code)
        try:
            payload = msgpack.packb(args, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidArgument(f"tool arguments cannot be encoded: {exc}") from None
        if len(payload) > self.max_message_bytes:
            raise LimitExceeded(f"tool arguments are over {self.max_message_bytes} bytes")
        record: list[tuple[Any, bytes]] = []
        made = 0
        if self.inline and entry.try_inline():
            call = self._new_call(host, limits, deadline, inline=True)
            outcome = self._run(entry, call, payload)
            if not isinstance(outcome, _Restart):
                self.stats["inline"] += 1
                entry.inline_done()
                for level, text in call.logs:
                    host.log(level, text)
                return self._result(outcome, call)
            entry.inline_abandoned()
            self.stats["restarted"] += 1
            record, made = call.record, call.syscalls
        call = self._new_call(host, limits, deadline, inline=False)
        call.replay, call.syscalls = record, made
        self.stats["threaded"] += 1
        with self._ticker:
            # Not abandoned on cancellation: the store's epoch check sees it (through
            # trio.from_thread.check_cancelled) and ends the wasm, and the call returns only
            # once its thread has; blocking syscalls run in this task, so they are cancelled
            # with it.
            outcome = await trio.to_thread.run_sync(self._run, entry, call, payload,
                                                    abandon_on_cancel=False)
        if isinstance(outcome, Cancelled) and call.cancelled:
            await trio.lowlevel.checkpoint()  # raises trio's Cancelled if still cancelled
        if isinstance(outcome, _Restart):  # cannot happen outside inline attempts
            raise SandboxCrashed("wasm call could not run")
        return self._result(outcome, call)

    def _new_call(self, host: SyscallHost, limits: CallLimits, deadline: float, *,
                  inline: bool) -> _Call:
        call = _Call(host, limits, deadline, inline)
        call.memory_limit = limits.memory_mb << 20
        if inline:
            call.fuel = min(limits.fuel, self.inline_fuel)
            call.inline_deadline = time.perf_counter() + self.inline_seconds
            if self.inline_memory_mb < limits.memory_mb:
                call.memory_limit, call.capped = self.inline_memory_mb << 20, True
        else:
            call.fuel = limits.fuel
        return call

    @staticmethod
    def _near_cap(call: _Call, size: int) -> bool:
        return call.capped and size + max(PAGE, call.memory_limit // 16) > call.memory_limit

    def _result(self, outcome: bytes | BaseException, call: _Call) -> Any:
        if isinstance(outcome, BaseException):
            raise outcome
        if not outcome:
            return None
        try:
            envelope = decode_body(outcome, self._decode_limits)
        except ProtocolError as exc:
            raise ProtocolError(f"wasm tool returned a malformed result: {exc.message}") from None
        ok = envelope.get("ok")
        if ok is True and set(envelope) <= {"ok", "value"}:
            return envelope.get("value")
        if ok is False and isinstance(envelope.get("code"), str) and set(envelope) <= {
                "ok", "code", "message"}:
            message = envelope.get("message", "")
            if not isinstance(message, str):
                message = repr(message)
            raise error_from_wire(envelope["code"], message[:MAX_ERROR_MESSAGE])
        raise ProtocolError("wasm tool result must be {ok: true, value} or "
                            "{ok: false, code, message}")

    def _run(self, entry: _Entry, call: _Call, payload: bytes) -> bytes | BaseException:
        """One attempt. An inline attempt runs with at most `inline_memory_mb` of memory, so
        that what it can touch while it holds the trio loop is bounded too; `memory.grow`
        beyond that fails in it where the call's own limit would have let it succeed. So a
        capped attempt that ends in any error, or ends close to its cap, or makes a syscall
        close to its cap, is abandoned and re-run in a thread with the call's limits (a
        tool that copes with a failed grow without trapping or erring still sees -1, which
        WebAssembly allows `memory.grow` to return at any time)."""
        outcome = self._attempt(entry, call, payload)
        if call.capped and not isinstance(outcome, _Restart) and (
                isinstance(outcome, BaseException) or self._near_cap(call, call.final_memory)):
            return _Restart("inline attempt ended in an error or near its memory cap")
        return outcome

    def _attempt(self, entry: _Entry, call: _Call, payload: bytes) -> bytes | BaseException:
        """Fresh store and instance, write the arguments, call `run`, copy the result out.
        Returns the result's bytes, or the error (or `_Restart`) to raise."""
        store = wasmtime.Store(self._engine)
        store.set_limits(memory_size=call.memory_limit,
                         table_elements=self.max_table_elements, instances=1,
                         tables=self.max_tables, memories=1)
        store.set_fuel(call.fuel)
        store.set_epoch_deadline(1)
        F.set_epoch_callback(store, _on_epoch)
        ctx = call.ctx = F.context(store)
        previous = getattr(_tls, "call", None)
        _tls.call = call
        try:
            instance = F.instantiate(entry.pre, ctx)
            call.memory = F.export_memory(ctx, instance)
            call.alloc = F.export_func(ctx, instance, b"alloc")
            run = F.export_func(ctx, instance, b"run")
            ptr = self._guest_alloc(call, ctx, len(payload))
            if not F.write(ctx, call.memory, ptr, payload):
                return SandboxCrashed("the tool's arguments do not fit where alloc put them")
            values = (F.RAW * 2)()
            values[0].i32 = _s32(ptr)
            values[1].i32 = len(payload)
            F.call(ctx, run, values, 2)
            packed = values[0].i64 & M64
            rptr, rlen = packed >> 32, packed & M32
            room = call.limits.max_output_bytes - call.output
            if rlen > min(room, self.max_message_bytes):
                return LimitExceeded(f"wasm tool result of {rlen} bytes is over the output "
                                     f"limit ({max(room, 0)} bytes left)")
            data = F.read(ctx, call.memory, rptr, rlen)
            if data is None:
                return SandboxCrashed(f"run returned a result [{rptr}, +{rlen}) outside its "
                                      "memory")
            if call.replayed < len(call.replay):
                return SandboxCrashed("wasm tool ended before replaying its recorded syscalls")
            return data
        except _Stop as stop:
            call.end(stop.reason)
            return self._classify(call, None)
        except F.Trapped as trapped:
            return self._classify(call, trapped)
        finally:
            _tls.call = previous
            if call.memory is not None:
                call.final_memory = F.memory_region(ctx, call.memory)[1]
            call.ctx = call.memory = call.alloc = None
            store.close()

    def _classify(self, call: _Call, trapped: F.Trapped | None) -> BaseException:
        """The typed error for how a call ended. A reason recorded by the host side (a
        deadline, cancellation, `fail`, a restart) wins over the trap that carried it."""
        if call.stop is not None:
            return call.stop
        assert trapped is not None
        code, text = trapped.code, _trap_text(trapped.message)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            if call.inline and call.fuel < call.limits.fuel:
                return _Restart("inline fuel slice spent")
            return LimitExceeded(f"wasm tool spent its fuel ({call.limits.fuel})")
        if code == wasmtime.TrapCode.INTERRUPT:
            return LimitExceeded(f"wasm tool ran past its deadline of {call.limits.deadline} s")
        if code == wasmtime.TrapCode.STACK_OVERFLOW:
            # The stack is a resource the broker bounds, like memory: running out of it is
            # hitting a limit, not a crash of the sandbox.
            return LimitExceeded(f"wasm stack overflow (the limit is {self.max_wasm_stack} "
                                 "bytes)")
        if "memory minimum size" in text or "exceeds memory limits" in text:
            return LimitExceeded(f"memory limit of {call.limits.memory_mb} MiB: {text}")
        if call.memory is not None and call.ctx is not None:
            _, size = F.memory_region(call.ctx, call.memory)
            if size + max(PAGE, call.memory_limit // 16) > call.memory_limit:
                # Most likely memory.grow failed at the limit and the tool gave up (trapped).
                # A failed grow itself is invisible (it returns -1), so this is a guess: a
                # trap with memory within 1/16 of the limit counts as running out of it.
                return LimitExceeded(
                    f"memory limit of {call.limits.memory_mb} MiB reached ({text})")
        return SandboxCrashed(f"wasm trap: {text}")

    # -- host side of the guest's allocator ----------------------------------------------------

    def _guest_alloc(self, call: _Call, ctx: Any, n: int, caller: Any = None) -> int:
        alloc = call.alloc
        memory = call.memory
        if alloc is None or memory is None:  # during the start function
            if caller is None:
                raise _Stop(SandboxCrashed("module has no alloc export"))
            alloc = F.caller_func(caller, b"alloc")
            memory = F.caller_memory(caller)
            if alloc is None or memory is None:
                raise _Stop(SandboxCrashed("module has no alloc or memory export"))
        values = (F.RAW * 1)()
        values[0].i32 = _s32(n)
        try:
            F.call(ctx, alloc, values, 1)
        except F.Trapped as trapped:
            reason = call.stop or self._classify(call, trapped)
            if isinstance(reason, SandboxCrashed):
                reason = SandboxCrashed(f"alloc trapped during a host call: {reason.message}")
            raise _Stop(reason) from None
        ptr = values[0].i32 & M32
        if ptr == 0:
            raise _Stop(LimitExceeded(f"the tool's allocator could not give {n} bytes "
                                      f"(memory limit {call.limits.memory_mb} MiB)"))
        _, size = F.memory_region(ctx, memory)
        if ptr + n > size:
            raise _Stop(SandboxCrashed(f"alloc({n}) returned [{ptr}, +{n}), outside memory"))
        return ptr

    # -- host functions (called from wasm, on the thread running it) ---------------------------

    def _host_syscall(self, env: Any, caller: Any, values: Any, n: int) -> int:
        call = getattr(_tls, "call", None)
        try:
            if call is None:
                raise _Stop(SandboxCrashed("host function called outside a call"))
            ptr, length = values[0].i32 & M32, values[1].i32 & M32
            ctx = F.caller_context(caller)
            memory = call.memory if call.memory is not None else F.caller_memory(caller)
            response = self._answer(call, ctx, memory, ptr, length)
            out = self._guest_alloc(call, ctx, len(response), caller)
            memory = call.memory if call.memory is not None else F.caller_memory(caller)
            if not F.write(ctx, memory, out, response):
                raise _Stop(SandboxCrashed("a syscall response does not fit where alloc put it"))
            values[0].i64 = _s64((out << 32) | len(response))
            return 0
        except BaseException as exc:
            return _trap(call, exc, "syscall")

    def _answer(self, call: _Call, ctx: Any, memory: Any, ptr: int, length: int) -> bytes:
        """The response (msgpack bytes) to the request at [ptr, ptr+length)."""
        if call.stop is not None:
            raise _Stop(call.stop)
        reason = call.time_up()
        if reason is not None:
            raise _Stop(reason)
        _, size = F.memory_region(ctx, memory)
        if call.inline and self._near_cap(call, size):
            raise _Stop(_Restart("syscall near the inline memory cap"))
        inside = ptr + length <= size  # unbounded ints: a region cannot wrap around
        request = F.read(ctx, memory, ptr, length) if (
            inside and length <= self.max_message_bytes) else None
        key = (ptr, length, request)
        if call.replayed < len(call.replay):
            want, response = call.replay[call.replayed]
            if want != key:
                raise _Stop(SandboxCrashed("wasm tool is not deterministic: its re-run asked "
                                           "for a different syscall"))
            call.replayed += 1
            return response
        response = self._respond(call, ptr, length, inside, request)
        if call.inline:
            call.record.append((key, response))
        return response

    def _respond(self, call: _Call, ptr: int, length: int, inside: bool,
                 request: bytes | None) -> bytes:
        call.syscalls += 1  # every attempt, malformed ones too
        if call.syscalls > call.limits.max_syscalls + 1:
            # It was told once (by the kernel's cap) and kept going.
            raise _Stop(LimitExceeded(f"wasm tool made more than {call.limits.max_syscalls} "
                                      "syscalls"))
        if not inside:
            return _error(InvalidArgument(f"syscall request [{ptr}, {ptr}+{length}) is "
                                          "outside linear memory"))
        if request is None:
            return _error(LimitExceeded(f"syscall request of {length} bytes is over "
                                        f"{self.max_message_bytes}"))
        try:
            req = decode_body(request, self._decode_limits)
        except ProtocolError as exc:
            return _error(InvalidArgument(f"malformed syscall request: {exc.message}"))
        name, args = req.get("name"), req.get("args", {})
        if not isinstance(name, str) or set(req) - {"name", "args"}:
            return _error(InvalidArgument("a syscall request is {name: str, args: map}"))
        try:
            try:
                value = call.host.syscall_now(name, args)
            except WouldBlock:
                if call.inline:
                    raise _Stop(_Restart(f"{name} must wait")) from None
                value = self._blocking(call, name, args)
        except LibosError as exc:
            if exc.detail.get("ends_call"):  # a cap of the call or its process ran out
                raise _Stop(exc) from None
            return _error(exc)
        except (_Stop, trio.Cancelled):
            raise
        except Exception as exc:
            log.error("syscall %s from a wasm tool failed", name, exc_info=exc)
            return _error(InvalidArgument(f"{name} failed: {type(exc).__name__}"))
        try:
            response = msgpack.packb({"ok": True, "value": value}, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return _error(InvalidArgument(f"{name}: its result cannot be encoded"))
        if len(response) > self.max_message_bytes:
            return _error(LimitExceeded(f"{name}: response of {len(response)} bytes is over "
                                        f"{self.max_message_bytes}"))
        return response

    def _blocking(self, call: _Call, name: str, args: Any) -> Any:
        """A syscall that waits, from the worker thread: in trio, bounded by the deadline."""

        async def bounded() -> Any:
            with trio.move_on_at(trio.current_time() + call.deadline - time.monotonic()):
                return await call.host.syscall(name, args)
            raise _Stop(LimitExceeded(f"wasm tool ran past its deadline of "
                                      f"{call.limits.deadline} s (in {name})"))

        try:
            return trio.from_thread.run(bounded)
        except trio.Cancelled:
            call.cancelled = True
            raise _Stop(Cancelled("the call was cancelled")) from None
        except trio.RunFinishedError:
            raise _Stop(Cancelled("the broker is shutting down")) from None

    def _host_log(self, env: Any, caller: Any, values: Any, n: int) -> int:
        call = getattr(_tls, "call", None)
        try:
            if call is None:
                raise _Stop(SandboxCrashed("host function called outside a call"))
            level = values[0].i32 & M32
            ptr, length = values[1].i32 & M32, values[2].i32 & M32
            ctx = F.caller_context(caller)
            memory = call.memory if call.memory is not None else F.caller_memory(caller)
            if call.output + length > call.limits.max_output_bytes:
                raise _Stop(LimitExceeded(f"wasm tool wrote more than "
                                          f"{call.limits.max_output_bytes} bytes of output"))
            data = F.read(ctx, memory, ptr, length)
            if data is None:
                values[0].i32 = 1
                return 0
            call.output += length
            text = data.decode("utf-8", "replace")
            name = LOG_LEVELS[level] if level < len(LOG_LEVELS) else "info"
            if call.inline:
                call.logs.append((name, text))  # emitted only if this attempt is the call
            else:
                try:
                    call.host.log(name, text)
                except LibosError as exc:
                    raise _Stop(exc) from None
            values[0].i32 = 0
            return 0
        except BaseException as exc:
            return _trap(call, exc, "log")

    def _host_fail(self, env: Any, caller: Any, values: Any, n: int) -> int:
        call = getattr(_tls, "call", None)
        try:
            if call is None:
                raise _Stop(SandboxCrashed("host function called outside a call"))
            cptr, clen = values[0].i32 & M32, values[1].i32 & M32
            mptr, mlen = values[2].i32 & M32, values[3].i32 & M32
            ctx = F.caller_context(caller)
            memory = call.memory if call.memory is not None else F.caller_memory(caller)
            code = F.read(ctx, memory, cptr, min(clen, 64))
            message = F.read(ctx, memory, mptr, min(mlen, MAX_ERROR_MESSAGE))
            if code is None or message is None:
                raise _Stop(InvalidArgument("libos.fail: code or message outside memory"))
            raise _Stop(error_from_wire(code.decode("utf-8", "replace"),
                                        message.decode("utf-8", "replace")))
        except BaseException as exc:
            return _trap(call, exc, "fail")

    async def aclose(self) -> None:
        self._closed = True
        self._entries.clear()


def _error(exc: LibosError) -> bytes:
    return msgpack.packb({"ok": False, "code": exc.code,
                          "message": exc.message[:MAX_ERROR_MESSAGE]}, use_bin_type=True)

