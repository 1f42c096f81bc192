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
from ctypes import POINTER, addressof, byref, c_size_t, c_uint8, c_uint64, c_void_p
from typing import Any

import wasmtime
from wasmtime import _ffi as ffi

RAW = ffi.wasmtime_val_raw_t
HostCallback = ffi.wasmtime_func_unchecked_callback_t
_EXTERN_FUNC = ffi.WASMTIME_EXTERN_FUNC.value
_EXTERN_MEMORY = ffi.WASMTIME_EXTERN_MEMORY.value

# (context, data, *deadline_delta, *update_kind) -> wasmtime_error_t* (0: carry on)
EpochCallback = ctypes.CFUNCTYPE(c_size_t, POINTER(ffi.wasmtime_context_t), c_void_p,
                                 POINTER(c_uint64), POINTER(c_uint8))
_UPDATE_CONTINUE = 0
_NO_FINALIZER = ctypes.CFUNCTYPE(None, c_void_p)()  # a NULL function pointer


class Trapped(Exception):
    """Wasm trapped (or a host function or the epoch callback ended the call)."""

    def __init__(self, code: wasmtime.TrapCode | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _raise_outcome(error: Any, trap: Any) -> None:
    if error:
        raise Trapped(None, str(wasmtime.WasmtimeError._from_ptr(error)))
    if trap:
        t = wasmtime.Trap._from_ptr(trap)
        raise Trapped(t.trap_code, t.message)


def context(store: wasmtime.Store) -> Any:
    return store._context()


def caller_context(caller: Any) -> Any:
    return ffi.wasmtime_caller_context(caller)


def instantiate(pre: wasmtime.InstancePre, ctx: Any) -> Any:
    instance = ffi.wasmtime_instance_t()
    trap = POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_instance_pre_instantiate(pre.ptr(), ctx, byref(instance), byref(trap))
    _raise_outcome(error, trap)
    return instance


def export_func(ctx: Any, instance: Any, name: bytes) -> Any:
    item = ffi.wasmtime_extern_t()
    if not ffi.wasmtime_instance_export_get(ctx, byref(instance), name, len(name), byref(item)):
        return None
    if item.kind != _EXTERN_FUNC:
        return None
    return item.of.func


def export_memory(ctx: Any, instance: Any, name: bytes = b"memory") -> Any:
    item = ffi.wasmtime_extern_t()
    if not ffi.wasmtime_instance_export_get(ctx, byref(instance), name, len(name), byref(item)):
        return None
    if item.kind != _EXTERN_MEMORY:
        return None
    return item.of.memory


def caller_memory(caller: Any, name: bytes = b"memory") -> Any:
    item = ffi.wasmtime_extern_t()
    if not ffi.wasmtime_caller_export_get(caller, name, len(name), byref(item)):
        return None
    if item.kind != _EXTERN_MEMORY:
        return None
    return item.of.memory


def call(ctx: Any, func: Any, values: Any, n: int) -> None:
    """Call `func` with arguments in `values[:n]`; its results replace them."""
    trap = POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_func_call_unchecked(ctx, byref(func), values, n, byref(trap))
    _raise_outcome(error, trap)


def memory_region(ctx: Any, memory: Any) -> tuple[int, int]:
    """(address of byte 0, size in bytes) of a linear memory, valid until it next grows."""
    size = ffi.wasmtime_memory_data_size(ctx, byref(memory))
    data = ffi.wasmtime_memory_data(ctx, byref(memory))
    return (addressof(data.contents) if size else 0), size


def read(ctx: Any, memory: Any, offset: int, length: int) -> bytes | None:
    """A copy of memory[offset:offset+length], or None if that is not all inside memory.
    Offsets are unsigned and checked with unbounded integers: nothing can wrap."""
    base, size = memory_region(ctx, memory)
    if offset < 0 or length < 0 or offset + length > size:
        return None
    return ctypes.string_at(base + offset, length) if length else b""


def write(ctx: Any, memory: Any, offset: int, data: bytes) -> bool:
    base, size = memory_region(ctx, memory)
    if offset < 0 or offset + len(data) > size:
        return False
    if data:
        ctypes.memmove(base + offset, data, len(data))
    return True


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


def set_epoch_callback(store: wasmtime.Store, callback: Any) -> None:
    """Have `callback` decide what happens when the store's epoch deadline passes; it must
    be an `EpochCallback` kept alive as long as the store."""
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), callback, None, _NO_FINALIZER)


def continue_for(delta_out: Any, kind_out: Any, ticks: int) -> int:
    """Epoch callback result: carry on until `ticks` more epochs have passed."""
    delta_out[0] = ticks
    kind_out[0] = _UPDATE_CONTINUE
    return 0


def caller_func(caller: Any, name: bytes) -> Any:
    item = ffi.wasmtime_extern_t()
    if not ffi.wasmtime_caller_export_get(caller, name, len(name), byref(item)):
        return None
    if item.kind != _EXTERN_FUNC:
        return None
    return item.of.func


def use_pooling(cfg: wasmtime.Config, *, instances: int, memories: int, tables: int,
                tables_per_module: int, table_elements: int, memory_bytes: int,
                instance_bytes: int) -> None:
    """Have engines made from `cfg` take instances, memories and tables from a pool of slots
    of these sizes (no async stacks, GC heaps or components)."""
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
                (ffi.wasmtime_pooling_allocation_config_total_stacks_set, 0),
                (ffi.wasmtime_pooling_allocation_config_total_gc_heaps_set, 0),
                (ffi.wasmtime_pooling_allocation_config_total_component_instances_set, 0)):
            setter(pool, value)
        ffi.wasmtime_pooling_allocation_strategy_set(cfg.ptr(), pool)
    finally:
        ffi.wasmtime_pooling_allocation_config_delete(pool)
