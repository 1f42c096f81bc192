"""A compiled WebAssembly module as the driver keeps it (made by `sandboxes/wasm_cache`, run by
`sandboxes/wasm_abi`): a module of its own so that neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import wasmtime


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
    size: int = 0  # bytes it stands for in the module cache's bound (its module's, as stored)
