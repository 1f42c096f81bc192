"""The settings every engine that compiles tools is made of: the broker's (which adds its
pool) and the compile child's (`sandboxes/wasm_compile`), whose artefacts the broker loads, so
they must match. Imports wasmtime (and `wasm_ffi`, over it) alone: the child starts with
nothing else."""

from __future__ import annotations

import json
import os
import resource
import sys

import wasmtime

from sandboxes.wasm_ffi import use_strategy

# Tools are compiled for a quick registration, not for fast code: a tool is a few small
# functions run briefly under fuel, and the linked form's compile was most of a WAT tool's
# registration. Cranelift, unoptimised: about 6% fewer instructions a registration, half the
# whole module's background compile. Not Winch (wasmtime's baseline compiler, a further 3%):
# it lacks tail calls and relaxed SIMD, so a valid tool Cranelift took would be refused,
# one stored before among them (README, Benchmarks). Same fuel, epochs, stack and memory
# checks either way; compute-heavy tools run slower.
COMPILER = "cranelift"
OPT_LEVEL = "none"


def engine_config(max_wasm_stack: int) -> wasmtime.Config:
    """What every engine that compiles tools is made of (the pool is added by the caller)."""
    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    cfg.epoch_interruption = True
    cfg.max_wasm_stack = max_wasm_stack
    use_strategy(cfg, COMPILER)
    cfg.cranelift_opt_level = OPT_LEVEL
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
    return cfg


def child_main() -> None:
    """The compile child (argv: root, max_wasm_stack, CPU seconds, data bytes): it limits its
    own CPU and data before it reads the module (over the CPU, the kernel kills it; an
    allocation over the data aborts it), compiles stdin's module and writes `ok` and the
    artefact, or `error` and why."""
    stack, seconds, memory = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    wasm = sys.stdin.buffer.read()
    try:
        data = wasmtime.Module(wasmtime.Engine(engine_config(stack)), wasm).serialize()
        sys.stdout.buffer.write(b"ok\n" + data)
    except wasmtime.WasmtimeError as exc:
        sys.stdout.buffer.write(b"error\n" + json.dumps(str(exc)).encode())
    sys.stdout.flush()
    os._exit(0)
