"""A compiled WebAssembly module as the driver keeps it (made by `sandboxes/wasm_cache`, run by
`sandboxes/wasm_abi`): a module of its own so that neither imports the other."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import wasmtime
from wasmtime import _ffi as ffi


@dataclass(slots=True)
class CompiledModule:
    """A compiled module ready to instantiate: linked with the host functions ahead of time
    (`pre`), or, for a module that imports from the guest library module, instantiated per
    call after the library, each import served by the library export `links` names."""

    hash: str
    module: wasmtime.Module
    pre: wasmtime.InstancePre | None
    links: tuple[bytes, ...] | None = None
    library: wasmtime.InstancePre | None = None
    size: int = 0  # bytes it stands for in the module cache's bound (`native_bytes`, ...)
    # A linked module's data segments, cut from it (`wasm_data`): written by each call.
    data: tuple[tuple[int, bytes], ...] = ()


def native_bytes(module: wasmtime.Module) -> int:
    """The bytes of the compiled image `module` holds in memory (its code and data, as its
    artefact serializes them): what a cached module costs. It is 10-13x the module's size for
    a WAT tool (47 KB for a 3.7 KB module), and nothing for a custom section (dropped)."""
    start, end = ctypes.c_void_p(), ctypes.c_void_p()
    ffi.wasmtime_module_image_range(module.ptr(), ctypes.byref(start), ctypes.byref(end))
    return (end.value or 0) - (start.value or 0)
