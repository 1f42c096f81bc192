"""A thin fast path over wasmtime-py's ctypes bindings (`wasmtime._ffi`).

wasmtime-py's public `Func.__call__` converts every value through `Val` and looks up the
function type on each call (~15 µs a call); its host-function trampoline does the same in
reverse and reports exceptions through a process-wide global, which is not safe when wasm
runs in several threads at once. The WASM sandbox needs neither: every function it calls or
provides has a type checked once per module. So this module calls and defines functions
"unchecked" (raw values in a `wasmtime_val_raw_t` array) and reports traps as exceptions of
its own. Everything here is pinned to the wasmtime-py version in pyproject (50.x); a test
runs it on every CI run, so an incompatible upgrade fails loudly, not silently.

Only this module touches `wasmtime._ffi` or private attributes of wasmtime-py objects.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    POINTER,
    byref,
    c_bool,
    c_char_p,
    c_int64,
    c_size_t,
    c_uint8,
    c_uint64,
    c_void_p,
)
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

RAW = ffi.wasmtime_val_raw_t
# ctypes types made once: `POINTER(t)` and `RAW * n` look their type up again at each use
# (~1 µs a call, several times per wasm call).
RAW1, RAW2 = RAW * 1, RAW * 2
_TRAP_PTR = POINTER(ffi.wasm_trap_t)
HostCallback = ffi.wasmtime_func_unchecked_callback_t
_EXTERN_FUNC = ffi.WASMTIME_EXTERN_FUNC.value
_EXTERN_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value

# (context, data, *deadline_delta, *update_kind) -> wasmtime_error_t* (0: carry on)
EpochCallback = ctypes.CFUNCTYPE(c_size_t, POINTER(ffi.wasmtime_context_t), c_void_p,
                                 POINTER(c_uint64), POINTER(c_uint8))
_UPDATE_CONTINUE = 0
_NO_FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)()  # a NULL function pointer


def _proto(name: str, restype: Any, *argtypes: Any) -> Any:
    """A private prototype of a C function: pointers as plain integers (`c_void_p`), no
    Python wrapper around the call. `dll[name]` makes a new function object, so wasmtime-py's
    own prototype (`dll.name`) is left as it is."""
    fn = ffi.dll[name]
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


_P = c_void_p
_store_new = _proto("wasmtime_store_new", _P, _P, _P, _P)
_store_context = _proto("wasmtime_store_context", _P, _P)
_store_limiter = _proto("wasmtime_store_limiter", None, _P, *[c_int64] * 5)
_store_delete = _proto("wasmtime_store_delete", None, _P)
_set_fuel = _proto("wasmtime_context_set_fuel", _P, _P, c_uint64)
_set_epoch_deadline = _proto("wasmtime_context_set_epoch_deadline", None, _P, c_uint64)
_epoch_callback = _proto("wasmtime_store_epoch_deadline_callback", None, _P, EpochCallback,
                         _P, _P)
_instance_new = _proto("wasmtime_instance_new", _P, _P, _P, _P, c_size_t, _P, _P)
_pre_instantiate = _proto("wasmtime_instance_pre_instantiate", _P, _P, _P, _P, _P)
_export_get = _proto("wasmtime_instance_export_get", c_bool, _P, _P, c_char_p, c_size_t, _P)
_caller_export_get = _proto("wasmtime_caller_export_get", c_bool, _P, c_char_p, c_size_t, _P)
_caller_context = _proto("wasmtime_caller_context", _P, _P)
_call_unchecked = _proto("wasmtime_func_call_unchecked", _P, _P, _P, _P, c_size_t, _P)
_memory_data = _proto("wasmtime_memory_data", _P, _P, _P)
_memory_data_size = _proto("wasmtime_memory_data_size", c_size_t, _P, _P)


class Trapped(Exception):
    """Wasm trapped (or a host function or the epoch callback ended the call)."""

    def __init__(self, code: wasmtime.TrapCode | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _raise_outcome(error: int | None, trap: Any) -> None:
    if error:
        raise Trapped(None, str(wasmtime.WasmtimeError._from_ptr(
            ctypes.cast(error, POINTER(ffi.wasmtime_error_t)))))
    if trap:
        t = wasmtime.Trap._from_ptr(trap)
        raise Trapped(t.trap_code, t.message)


class Store:
    """A bare store of `engine` with these limits and fuel, an epoch
    deadline of one tick handled by `on_epoch`, and nothing else: no data, no WASI. `ctx` is
    its context. `close` must be called (it is not left to the garbage collector)."""

    __slots__ = ("ctx", "ptr")

    def __init__(self, engine: wasmtime.Engine, *, memory_size: int, table_elements: int,
                 tables: int, instances: int, fuel: int, on_epoch: Any) -> None:
        self.ptr = _store_new(engine.ptr(), None, None)
        if not self.ptr:
            raise MemoryError("wasmtime could not make a store")
        self.ctx = _store_context(self.ptr)
        _store_limiter(self.ptr, memory_size, table_elements, instances, tables, 1)
        error = _set_fuel(self.ctx, fuel)
        if error:
            self.close()
            raise wasmtime.WasmtimeError._from_ptr(
                ctypes.cast(error, POINTER(ffi.wasmtime_error_t)))
        _set_epoch_deadline(self.ctx, 1)
        _epoch_callback(self.ptr, on_epoch, None, None)

    def close(self) -> None:
        if self.ptr:
            ptr, self.ptr, self.ctx = self.ptr, None, None
            _store_delete(ptr)


def caller_context(caller: Any) -> int:
    return _caller_context(caller)


def instantiate(pre: wasmtime.InstancePre, ctx: int) -> Any:
    instance = ffi.wasmtime_instance_t()
    trap = _TRAP_PTR()
    _raise_outcome(_pre_instantiate(pre.ptr(), ctx, byref(instance), byref(trap)), trap)
    return instance


def instantiate_linked(ctx: int, module: wasmtime.Module, library: Any,
                       names: tuple[bytes, ...]) -> Any:
    """An instance of `module` whose imports, in order, are the exports `names` of the
    instance `library` in the same store."""
    externs = (ffi.wasmtime_extern_t * len(names))()
    lib = byref(library)
    for i, name in enumerate(names):
        if not _export_get(ctx, lib, name, len(name), byref(externs[i])):
            raise Trapped(None, f"the guest library exports no {name.decode()!r}")
    instance = ffi.wasmtime_instance_t()
    trap = _TRAP_PTR()
    _raise_outcome(_instance_new(ctx, module.ptr(), externs, len(names), byref(instance),
                                 byref(trap)), trap)
    return instance


def _picked(found: bool, item: Any, kind: int, field: str) -> Any:
    """The extern a lookup found, if it is of `kind` (its `field` of the union), else None."""
    return getattr(item.of, field) if found and item.kind == kind else None


def export_func(ctx: int, instance: Any, name: bytes) -> Any:
    item = ffi.wasmtime_extern_t()
    found = _export_get(ctx, byref(instance), name, len(name), byref(item))
    return _picked(found, item, _EXTERN_FUNC, "func")


def export_memory(ctx: int, instance: Any, name: bytes = b"memory") -> Any:
    item = ffi.wasmtime_extern_t()
    found = _export_get(ctx, byref(instance), name, len(name), byref(item))
    return _picked(found, item, _EXTERN_MEMORY, "memory")


def caller_memory(caller: Any, name: bytes = b"memory") -> Any:
    item = ffi.wasmtime_extern_t()
    found = _caller_export_get(caller, name, len(name), byref(item))
    return _picked(found, item, _EXTERN_MEMORY, "memory")


def caller_func(caller: Any, name: bytes) -> Any:
    item = ffi.wasmtime_extern_t()
    found = _caller_export_get(caller, name, len(name), byref(item))
    return _picked(found, item, _EXTERN_FUNC, "func")


def call(ctx: int, func: Any, values: Any, n: int) -> None:
    """Call `func` with arguments in `values[:n]`; its results replace them."""
    trap = _TRAP_PTR()
    error = _call_unchecked(ctx, byref(func), values, n, byref(trap))
    if error or trap:
        _raise_outcome(error, trap)


def memory_region(ctx: int, memory: Any) -> tuple[int, int]:
    """(address of byte 0, size in bytes) of a linear memory, valid until it next grows."""
    ref = byref(memory)
    return _memory_data(ctx, ref) or 0, _memory_data_size(ctx, ref)


def read(ctx: int, memory: Any, offset: int, length: int) -> bytes | None:
    """A copy of memory[offset:offset+length], or None if that is not all inside memory.
    Offsets are unsigned and checked with unbounded integers: nothing can wrap."""
    base, size = memory_region(ctx, memory)
    if offset < 0 or length < 0 or offset + length > size:
        return None
    return ctypes.string_at(base + offset, length) if length else b""


def get(base: int, size: int, offset: int, length: int) -> bytes | None:
    """`read` within a region already found (`memory_region`)."""
    if offset < 0 or length < 0 or offset + length > size:
        return None
    return ctypes.string_at(base + offset, length) if length else b""


def put(base: int, offset: int, data: bytes) -> None:
    """Copy `data` to a place in a region already found and checked to hold it."""
    if data:
        ctypes.memmove(base + offset, data, len(data))


def new_trap(message: str) -> int:
    """A trap to return from a host callback (ownership passes to wasmtime)."""
    raw = message.encode("utf-8", "replace")
    ptr = ffi.wasmtime_trap_new(raw, len(raw))
    return ctypes.cast(ptr, c_void_p).value or 0


def new_error(message: str) -> int:
    ptr = ffi.wasmtime_error_new(message.encode("utf-8", "replace"))
    return ctypes.cast(ptr, c_void_p).value or 0


def define_host(linker: wasmtime.Linker, module: str, name: str, ty: wasmtime.FuncType,
                callback: Any) -> None:
    """Define an unchecked host function in a linker; `callback` must be a `HostCallback`
    that the caller keeps alive as long as the linker."""
    m, n = module.encode(), name.encode()
    error = ffi.wasmtime_linker_define_func_unchecked(
        linker.ptr(), m, len(m), n, len(n), ty.ptr(), callback, None, _NO_FINALIZER)
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)


def continue_for(delta_out: Any, kind_out: Any, ticks: int) -> int:
    """Epoch callback result: carry on until `ticks` more epochs have passed."""
    delta_out[0] = ticks
    kind_out[0] = _UPDATE_CONTINUE
    return 0


# The C API's `wasmtime_strategy_t`; wasmtime-py's `Config.strategy` knows only the first two.
_STRATEGIES = {"auto": 0, "cranelift": 1, "winch": 2}


def use_strategy(cfg: wasmtime.Config, name: str) -> None:
    """Have engines made from `cfg` compile wasm functions with this compiler (`winch`:
    wasmtime's baseline compiler, one pass per function; trampolines stay Cranelift's)."""
    ffi.wasmtime_config_strategy_set(cfg.ptr(), _STRATEGIES[name])


def use_pooling(cfg: wasmtime.Config, *, instances: int, memories: int, tables: int,
                tables_per_module: int, table_elements: int, memory_bytes: int,
                instance_bytes: int, keep_resident: int) -> None:
    """Have engines made from `cfg` take instances, memories and tables from a pool of slots
    of these sizes (no async stacks, GC heaps or components); a slot given back has its
    first `keep_resident` bytes of memory and of each table zeroed in place, the rest
    returned to the OS (zero pages again when touched)."""
    pool = ffi.wasmtime_pooling_allocation_config_new()
    try:
        for setter, value in (
                (ffi.wasmtime_pooling_allocation_config_total_core_instances_set, instances),
                (ffi.wasmtime_pooling_allocation_config_total_memories_set, memories),
                (ffi.wasmtime_pooling_allocation_config_total_tables_set, tables),
                (ffi.wasmtime_pooling_allocation_config_max_tables_per_module_set,
                 tables_per_module),
                (ffi.wasmtime_pooling_allocation_config_table_elements_set, table_elements),
                (ffi.wasmtime_pooling_allocation_config_max_memory_size_set, memory_bytes),
                (ffi.wasmtime_pooling_allocation_config_max_core_instance_size_set,
                 instance_bytes),
                (ffi.wasmtime_pooling_allocation_config_linear_memory_keep_resident_set,
                 keep_resident),
                (ffi.wasmtime_pooling_allocation_config_table_keep_resident_set, keep_resident),
                (ffi.wasmtime_pooling_allocation_config_total_stacks_set, 0),
                (ffi.wasmtime_pooling_allocation_config_total_gc_heaps_set, 0),
                (ffi.wasmtime_pooling_allocation_config_total_component_instances_set, 0)):
            setter(pool, value)
        ffi.wasmtime_pooling_allocation_strategy_set(cfg.ptr(), pool)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)
