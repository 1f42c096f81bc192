"""The guest ABI (`wasm-tools/ABI.md`) on the host side.

What a module may import (only the `libos` host functions, each optional, with their exact
types) and must export (its memory, `alloc`, `run`), checked when it is loaded; the three host
functions, `libos.syscall`, `libos.log` and `libos.fail`, with every region a guest names
checked against its linear memory (offsets are unsigned and added with unbounded integers:
nothing wraps); and one attempt at a call: a fresh `Store` and instance with the call's fuel,
epoch deadline and memory/table/instance limits, the arguments written through the guest's
`alloc`, `run` called, its result copied out, and the typed error for how it ended.

Where an attempt runs and whether it is re-run is `sandboxes/wasm_schedule.py`'s business;
the state it shares with the host functions is `sandboxes/wasm_call.py`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgpack
import trio
import wasmtime

from broker.errors import (
    InvalidArgument,
    LibosError,
    LimitExceeded,
    ProtocolError,
    SandboxCrashed,
    tool_error,
)
from broker.protocol import LOG_LEVELS, Limits, body_decoder
from sandboxes import wasm_ffi as F
from sandboxes.base import WouldBlock
from sandboxes.wasm_answer import answer_bytes
from sandboxes.wasm_call import PAGE, Restart, Stop, WasmCall, current, on_epoch
from sandboxes.wasm_data import put_segments
from sandboxes.wasm_interface import Unreadable, interface

if TYPE_CHECKING:
    from sandboxes.wasm_entry import CompiledModule

log = logging.getLogger("libos.sandboxes.wasm")

M32 = 0xFFFF_FFFF
M64 = 0xFFFF_FFFF_FFFF_FFFF

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


def _valtype(name: str) -> wasmtime.ValType:
    return wasmtime.ValType.i32() if name == I32 else wasmtime.ValType.i64()


def trap_text(message: str) -> str:
    """The cause line of a wasmtime trap or error message, without the backtrace."""
    if "Caused by:" in message:
        tail = message.split("Caused by:", 1)[1]
        lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
        if lines:
            return " / ".join(lines)[:500]
    return message.strip().splitlines()[0][:500] if message.strip() else "trap"


def signature(ty: Any) -> tuple[Any, ...] | None:
    """A function's, global's or memory's type as plain values (a memory by its minimum),
    else None: compared without calling into wasmtime again."""
    if isinstance(ty, wasmtime.FuncType):
        return ("func", _valtypes(ty.params), _valtypes(ty.results))
    if isinstance(ty, wasmtime.GlobalType):
        return ("global", str(ty.content), ty.mutable)
    if isinstance(ty, wasmtime.MemoryType):
        return ("memory", ty.limits.min)
    return None


def check_module(wasm: bytes,
                 library: tuple[str, dict[str, Any]] | None = None) -> tuple[bytes, ...] | None:
    """Imports only the `libos` host functions, with their exact types, or (with `library`:
    its import module name and its exports' `signature`s) what the guest library module
    exports, with the same types; exports the ABI's memory and functions. Returns, for a
    module that imports from the library, the library export that serves each of its imports
    in order (the host functions too: the library exports the ones it imports), else None.
    `wasm` is a module the engine has validated (compiled or loaded): its interface is read
    from its bytes (`wasm_interface`)."""
    try:
        imports, exports = interface(wasm)
    except Unreadable as exc:
        raise InvalidArgument(f"the module's imports and exports cannot be read: {exc}") from None
    links: list[bytes] = []
    linked = False
    for module_name, name, ty in imports:
        if library is not None and module_name == library[0]:
            linked = True
            want = library[1].get(name)
            if name == "memory" and ty[0] == "memory" and (
                    want is not None and want[0] == "memory"):
                _, minimum, maximum, is_64, shared, _ = ty
                if is_64 or shared or maximum is not None or minimum > want[1]:
                    raise InvalidArgument("the guest library's memory is imported with "
                                          "limits it does not have")
            elif want is None or want[0] == "memory" or ty != want:
                raise InvalidArgument(f"module imports {module_name}.{name}: the guest "
                                      "library has no such function or global of that type")
            links.append(name.encode())
            continue
        want_host = HOST_FUNCS.get(name) if module_name == "libos" else None
        if want_host is None or ty[0] != "func":
            raise InvalidArgument(
                f"module imports {module_name}.{name}: a wasm tool may import only "
                f"the libos functions {sorted(HOST_FUNCS)}")
        if ty[1:] != want_host:
            raise InvalidArgument(f"libos.{name} has the wrong type; the ABI says "
                                  f"{want_host[0]} -> {want_host[1]}")
        links.append(f"libos_{name}".encode())
    if library is not None and linked and not any(
            module_name == library[0] and name == "memory" for module_name, name, _ in imports):
        # (a store holds one memory: the library instance's, which its functions work on)
        raise InvalidArgument("a module that imports from the guest library must import its "
                              "memory too, not define its own")
    memory = exports.get("memory", ("",))
    if memory[0] != "memory":
        raise InvalidArgument("a wasm tool must export its linear memory as 'memory'")
    if memory[3] or memory[4] or memory[5] != PAGE:
        raise InvalidArgument("'memory' must be a 32-bit, unshared memory of 64 KiB pages")
    for name, want in EXPORT_FUNCS.items():
        ty = exports.get(name, ("",))
        if linked and name == "alloc" and name not in exports:
            continue  # the library's serves (`GuestAbi.attempt`)
        if ty[0] != "func" or ty[1:] != want:
            raise InvalidArgument(f"a wasm tool must export {name}: {want[0]} -> {want[1]}")
    return tuple(links) if linked else None


def _trap(call: WasmCall | None, exc: BaseException, host_function: str) -> Any:
    """End the call for what went wrong inside a host function and return the trap that
    unwinds the guest: the call's own typed error for a `Stop`, else `SandboxCrashed`.
    Nothing may cross the C boundary as a Python exception."""
    if isinstance(exc, Stop):
        reason: LibosError = exc.reason  # type: ignore[assignment]
        message = str(reason)
    else:
        log.error("wasm %s host function failed", host_function, exc_info=exc)
        reason = SandboxCrashed(f"host function failed: {type(exc).__name__}")
        message = "host function failed"
    if call is not None:
        call.end(reason)
    return F.new_trap(message)


def _error(exc: LibosError) -> bytes:
    return msgpack.packb({"ok": False, "code": exc.code,
                          "message": exc.message[:MAX_ERROR_MESSAGE]}, use_bin_type=True)


_OK_KEYS, _ERROR_KEYS = frozenset(("ok", "value")), frozenset(("ok", "code", "message"))


class GuestAbi:
    """The host side of the ABI for one engine: a linker holding the host functions, and
    attempts at calls of modules linked with it."""

    def __init__(self, engine: wasmtime.Engine, *, max_message_bytes: int, max_wasm_stack: int,
                 max_table_elements: int, max_tables: int) -> None:
        self.engine = engine
        self.max_message_bytes = max_message_bytes
        self.max_wasm_stack = max_wasm_stack
        self.max_table_elements = max_table_elements
        self.max_tables = max_tables
        self.decode_limits = Limits(max_frame_bytes=max_message_bytes,
                                    max_str_len=max_message_bytes,
                                    max_bin_len=max_message_bytes)
        self._decode = body_decoder(self.decode_limits)  # a result's, a syscall request's
        self.linker = wasmtime.Linker(engine)
        # Host functions are defined once, per engine (their FuncTypes are never shared
        # with another engine); the callbacks must stay referenced as long as the linker.
        self._callbacks = {
            "syscall": F.HostCallback(self._host_syscall),
            "log": F.HostCallback(self._host_log),
            "fail": F.HostCallback(self._host_fail),
        }
        for name, (params, results) in HOST_FUNCS.items():
            ty = wasmtime.FuncType([_valtype(p) for p in params],
                                   [_valtype(r) for r in results])
            F.define_host(self.linker, "libos", name, ty, self._callbacks[name])

    # -- one attempt --------------------------------------------------------------------------

    def attempt(self, entry: CompiledModule, call: WasmCall,
                payload: bytes) -> bytes | BaseException:
        """Fresh store and instance (a linked module's after a fresh instance of the guest
        library), write the arguments, call `run`, copy the result out. Returns the result's
        bytes, or the error (or `Restart`) to raise."""
        linked = entry.links is not None
        store = F.Store(self.engine, memory_size=call.memory_limit,
                        table_elements=self.max_table_elements, tables=self.max_tables,
                        instances=2 if linked else 1, fuel=call.fuel, on_epoch=on_epoch)
        ctx = call.ctx = store.ctx
        previous = getattr(current, "call", None)
        current.call = call
        try:
            if entry.links is None:
                instance = F.instantiate(entry.pre, ctx)
            else:
                library = F.instantiate(entry.library, ctx)
                # (a linked WAT tool's alloc is the library's, which it neither imports nor
                # exports: one import type, and its trampoline, fewer to compile)
                call.alloc = F.export_func(ctx, library, b"alloc")
                instance = F.instantiate_linked(ctx, entry.module, library, entry.links)
                if entry.data:  # as its instantiation would have, before it runs
                    put_segments(ctx, F.export_memory(ctx, instance), entry.data)
            call.memory = F.export_memory(ctx, instance)
            own = F.export_func(ctx, instance, b"alloc")  # (checked: every other has one)
            if own is not None:
                call.alloc = own
            run = F.export_func(ctx, instance, b"run")
            ptr, base = self._guest_alloc(call, ctx, len(payload))
            F.put(base, ptr, payload)  # inside memory: _guest_alloc checked [ptr, +len)
            values = F.RAW2()
            values[0].i32 = _s32(ptr)
            values[1].i32 = len(payload)
            F.call(ctx, run, values, 2)
            packed = values[0].i64 & M64
            rptr, rlen = packed >> 32, packed & M32
            room = call.limits.max_output_bytes - call.output
            if rlen > min(room, self.max_message_bytes):
                return LimitExceeded(f"wasm tool result of {rlen} bytes is over the output "
                                     f"limit ({max(room, 0)} bytes left)")
            base, size = F.memory_region(ctx, call.memory)
            call.final_memory = size
            data = F.get(base, size, rptr, rlen)
            if data is None:
                return SandboxCrashed(f"run returned a result [{rptr}, +{rlen}) outside its "
                                      "memory")
            if call.replayed < len(call.replay):
                return SandboxCrashed("wasm tool ended before replaying its recorded syscalls")
            return data
        except Stop as stop:
            call.end(stop.reason)
            return self.classify(call, None)
        except F.Trapped as trapped:
            return self.classify(call, trapped)
        finally:
            current.call = previous
            if call.memory is not None and not call.final_memory:
                call.final_memory = F.memory_region(ctx, call.memory)[1]
            call.ctx = call.memory = call.alloc = None
            store.close()

    def classify(self, call: WasmCall, trapped: F.Trapped | None) -> BaseException:
        """The typed error for how a call ended. A reason recorded by the host side (a
        deadline, cancellation, `fail`, a restart) wins over the trap that carried it."""
        if call.stop is not None:
            return call.stop
        assert trapped is not None
        code, text = trapped.code, trap_text(trapped.message)
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            if call.inline and call.fuel < call.limits.fuel:
                return Restart("inline fuel slice spent")
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

    def result(self, outcome: bytes | BaseException) -> Any:
        """The value of a finished attempt (its result envelope decoded), or its error."""
        if isinstance(outcome, BaseException):
            raise outcome
        if not outcome:
            return None
        try:
            envelope = self._decode(outcome)
        except ProtocolError as exc:
            raise ProtocolError(f"wasm tool returned a malformed result: {exc.message}") from None
        ok = envelope.get("ok")
        if ok is True and envelope.keys() <= _OK_KEYS:
            return envelope.get("value")
        if ok is False and isinstance(envelope.get("code"), str) and \
                envelope.keys() <= _ERROR_KEYS:
            message = envelope.get("message", "")
            if not isinstance(message, str):
                message = repr(message)
            raise tool_error(envelope["code"], message[:MAX_ERROR_MESSAGE])
        raise ProtocolError("wasm tool result must be {ok: true, value} or "
                            "{ok: false, code, message}")

    # -- host side of the guest's allocator ----------------------------------------------------

    def _guest_alloc(self, call: WasmCall, ctx: Any, n: int,
                     caller: Any = None) -> tuple[int, int]:
        """`n` bytes from the guest's `alloc`: (their offset, the address of the guest's
        memory), checked to be inside its memory (valid until the guest runs again)."""
        alloc = call.alloc
        memory = call.memory
        if alloc is None or memory is None:  # during the start function
            if caller is None:
                raise Stop(SandboxCrashed("module has no alloc export"))
            # the caller's own, else (a linked tool's) the library's, set before it ran
            own = F.caller_func(caller, b"alloc")
            alloc = alloc if own is None else own
            memory = F.caller_memory(caller)
            if alloc is None or memory is None:
                raise Stop(SandboxCrashed("module has no alloc or memory export"))
        values = F.RAW1()
        values[0].i32 = _s32(n)
        try:
            F.call(ctx, alloc, values, 1)
        except F.Trapped as trapped:
            reason = call.stop or self.classify(call, trapped)
            if isinstance(reason, SandboxCrashed):
                reason = SandboxCrashed(f"alloc trapped during a host call: {reason.message}")
            raise Stop(reason) from None
        ptr = values[0].i32 & M32
        if ptr == 0:
            raise Stop(LimitExceeded(f"the tool's allocator could not give {n} bytes "
                                     f"(memory limit {call.limits.memory_mb} MiB)"))
        base, size = F.memory_region(ctx, memory)
        if ptr + n > size:
            raise Stop(SandboxCrashed(f"alloc({n}) returned [{ptr}, +{n}), outside memory"))
        return ptr, base

    # -- host functions (called from wasm, on the thread running it) ---------------------------

    def _host_syscall(self, env: Any, caller: Any, values: Any, n: int) -> int:
        call = getattr(current, "call", None)
        try:
            if call is None:
                raise Stop(SandboxCrashed("host function called outside a call"))
            ptr, length = values[0].i32 & M32, values[1].i32 & M32
            ctx = F.caller_context(caller)
            memory = call.memory if call.memory is not None else F.caller_memory(caller)
            response = self._answer(call, ctx, memory, ptr, length)
            out, base = self._guest_alloc(call, ctx, len(response), caller)
            F.put(base, out, response)  # inside memory: _guest_alloc checked [out, +len)
            values[0].i64 = _s64((out << 32) | len(response))
            return 0
        except BaseException as exc:
            return _trap(call, exc, "syscall")

    def _answer(self, call: WasmCall, ctx: Any, memory: Any, ptr: int, length: int) -> bytes:
        """The response (msgpack bytes) to the request at [ptr, ptr+length)."""
        if call.stop is not None:
            raise Stop(call.stop)
        reason = call.time_up()
        if reason is not None:
            raise Stop(reason)
        _, size = F.memory_region(ctx, memory)
        if call.inline and call.near_cap(size):
            raise Stop(Restart("syscall near the inline memory cap"))
        inside = ptr + length <= size  # unbounded ints: a region cannot wrap around
        request = F.read(ctx, memory, ptr, length) if (
            inside and length <= self.max_message_bytes) else None
        key = (ptr, length, request)
        if call.replayed < len(call.replay):
            want, response = call.replay[call.replayed]
            if want != key:
                raise Stop(SandboxCrashed("wasm tool is not deterministic: its re-run asked "
                                          "for a different syscall"))
            call.replayed += 1
            return response
        response = self._respond(call, ptr, length, inside, request)
        if call.inline:
            call.record.append((key, response))
        return response

    def _respond(self, call: WasmCall, ptr: int, length: int, inside: bool,
                 request: bytes | None) -> bytes:
        call.syscalls += 1  # every attempt, malformed ones too
        if call.syscalls > call.limits.max_syscalls + 1:
            # It was told once (by the kernel's cap) and kept going.
            raise Stop(LimitExceeded(f"wasm tool made more than {call.limits.max_syscalls} "
                                     "syscalls"))
        if not inside:
            return _error(InvalidArgument(f"syscall request [{ptr}, {ptr}+{length}) is "
                                          "outside linear memory"))
        if request is None:
            return _error(LimitExceeded(f"syscall request of {length} bytes is over "
                                        f"{self.max_message_bytes}"))
        try:
            req = self._decode(request)
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
                    raise Stop(Restart(f"{name} must wait")) from None
                value = call.wait_for(name, args)
        except LibosError as exc:
            if exc.detail.get("ends_call"):  # a cap of the call or its process ran out
                raise Stop(exc) from None
            return _error(exc)
        except (Stop, trio.Cancelled):
            raise
        except Exception as exc:
            log.error("syscall %s from a wasm tool failed", name, exc_info=exc)
            return _error(InvalidArgument(f"{name} failed: {type(exc).__name__}"))
        response = answer_bytes(value, self.max_message_bytes)
        if isinstance(response, LibosError):
            return _error(type(response)(f"{name}: {response.message}"))
        return response

    def _host_log(self, env: Any, caller: Any, values: Any, n: int) -> int:
        call = getattr(current, "call", None)
        try:
            if call is None:
                raise Stop(SandboxCrashed("host function called outside a call"))
            level = values[0].i32 & M32
            ptr, length = values[1].i32 & M32, values[2].i32 & M32
            ctx = F.caller_context(caller)
            memory = call.memory if call.memory is not None else F.caller_memory(caller)
            if call.output + length > call.limits.max_output_bytes:
                raise Stop(LimitExceeded(f"wasm tool wrote more than "
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
                    raise Stop(exc) from None
            values[0].i32 = 0
            return 0
        except BaseException as exc:
            return _trap(call, exc, "log")

    def _host_fail(self, env: Any, caller: Any, values: Any, n: int) -> int:
        call = getattr(current, "call", None)
        try:
            if call is None:
                raise Stop(SandboxCrashed("host function called outside a call"))
            cptr, clen = values[0].i32 & M32, values[1].i32 & M32
            mptr, mlen = values[2].i32 & M32, values[3].i32 & M32
            ctx = F.caller_context(caller)
            memory = call.memory if call.memory is not None else F.caller_memory(caller)
            code = F.read(ctx, memory, cptr, min(clen, 64))
            message = F.read(ctx, memory, mptr, min(mlen, MAX_ERROR_MESSAGE))
            if code is None or message is None:
                raise Stop(InvalidArgument("libos.fail: code or message outside memory"))
            raise Stop(tool_error(code.decode("utf-8", "replace"),
                                  message.decode("utf-8", "replace")))
        except BaseException as exc:
            return _trap(call, exc, "fail")
