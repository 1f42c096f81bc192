"""WASM sandbox benchmark: a warm tool call (fresh store + instance + run) with 0, 1 and 100
syscalls, and compile versus cached load, each beside raw wasmtime-py doing the same work
in the same run.

* `sandbox` figures call `WasmSandbox.call` directly with a stub host whose syscall returns
  at once: what the sandbox costs, without the kernel. They are measured twice: the default
  (the call runs inline on the trio thread, in the fuel/time slice) and `inline=False`
  (every call hops to a worker thread and back).
* `raw` figures do the same with wasmtime-py's public API, as a user would write it: a new
  `Store` with fuel, an `Instance` with a Python host function, `alloc` + write the msgpack
  arguments, `run`, read the result; the host function reads the request, decodes it,
  encodes a response, calls `alloc` and writes it.
* `kernel` figures go through `Kernel.call_tool` (schema check, tool.call audit, the
  syscall's dispatch and audit): the same one-syscall tool against the builtin tool making
  the same syscall, and the dispatcher's own cost for that syscall.
* `thread_hop_us`: `trio.to_thread.run_sync` of a no-op, for scale.

Run with `python -m bench.wasm_bench` (or `python -m bench` for everything).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import trio
import wasmtime

from bench.timing import best_async_us, best_us
from broker import AgentImage, Kernel
from sandboxes import wasm_guest
from sandboxes.base import CallLimits, ToolCode
from sandboxes.testing import NullHost
from sandboxes.wasm import WasmSandbox

# A tool making N clock.now syscalls (N from its arguments), returning the last value.
LOOP_TOOL = wasm_guest.module("""
  (data (i32.const 1024) "clock.now")
  (data (i32.const 1040) "n")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (local $n i64) (local $i i64)
    (call $r_begin (local.get $args) (local.get $len))
    (if (call $mp_find (i32.const 1040) (i32.const 1))
      (then (local.set $n (call $mp_read_int))))
    (if (i64.eqz (local.get $n))
      (then (call $ret_begin) (call $mp_nil) (return (call $ret_end))))
    (block $done
      (loop $next
        (call $sys_begin (i32.const 1024) (i32.const 9))
        (call $mp_map (i32.const 0))
        (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br_if $next (i64.lt_u (local.get $i) (local.get $n)))))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))""")


class RawWasmtime:
    """The same instantiate-and-call with wasmtime-py's public API."""

    def __init__(self, wasm: bytes) -> None:
        cfg = wasmtime.Config()
        cfg.consume_fuel = True
        self.engine = wasmtime.Engine(cfg)
        self.module = wasmtime.Module(self.engine, wasm)
        self.i32 = wasmtime.ValType.i32()
        self.ty = wasmtime.FuncType([self.i32, self.i32], [wasmtime.ValType.i64()])
        self.log_ty = wasmtime.FuncType([self.i32, self.i32, self.i32], [self.i32])
        self.fail_ty = wasmtime.FuncType([self.i32] * 4, [])
        self.names = [i.name for i in self.module.imports]

    def call(self, args: bytes) -> bytes:
        store = wasmtime.Store(self.engine)
        store.set_fuel(10**9)

        def syscall(caller: wasmtime.Caller, ptr: int, length: int) -> int:
            memory = caller["memory"]
            request = msgpack.unpackb(memory.read(caller, ptr, ptr + length))
            response = msgpack.packb({"ok": True, "value": 1234.5 if request else None})
            out = caller["alloc"](caller, len(response))
            memory.write(caller, response, out)
            return (out << 32) | len(response)

        funcs = {
            "syscall": wasmtime.Func(store, self.ty, syscall, access_caller=True),
            "log": wasmtime.Func(store, self.log_ty, lambda *a: 0),
            "fail": wasmtime.Func(store, self.fail_ty, lambda *a: None),
        }
        instance = wasmtime.Instance(store, self.module, [funcs[n] for n in self.names])
        exports = instance.exports(store)
        memory = exports["memory"]
        ptr = exports["alloc"](store, len(args))
        memory.write(store, args, ptr)
        packed = exports["run"](store, ptr, len(args)) & 0xFFFF_FFFF_FFFF_FFFF
        return bytes(memory.read(store, packed >> 32, (packed >> 32) + (packed & 0xFFFF_FFFF)))


async def _sandbox_figures(wasm: bytes, root: Path) -> dict[str, Any]:
    code = ToolCode("bench", "wasm", wasm, hashlib.sha256(wasm).hexdigest())
    host = NullHost(1234.5, tool="bench", authority="bench")
    limits = CallLimits()
    raw = RawWasmtime(wasm)
    out: dict[str, Any] = {}
    inline = WasmSandbox(root / "inline-cache")
    threaded = WasmSandbox(root / "threaded-cache", inline=False)
    for sandbox in (inline, threaded):
        await sandbox.prepare("bench", "wasm", wasm)
    for n, number in ((0, 2000), (1, 2000), (100, 200)):
        args = {"n": n}
        packed = msgpack.packb(args)
        expected = await inline.call(code, args, host, limits)
        assert msgpack.unpackb(raw.call(packed)) == {"ok": True, "value": expected}
        raw_us = best_us(lambda p=packed: raw.call(p), number)
        inline_us = await best_async_us(lambda a=args: inline.call(code, a, host, limits),
                                         number)
        threaded_us = await best_async_us(
            lambda a=args: threaded.call(code, a, host, limits), max(number // 4, 50))
        out[f"{n}_syscalls"] = {
            "raw_wasmtime_us": raw_us,
            "sandbox_inline_us": inline_us,
            "sandbox_threaded_us": threaded_us,
            "inline_vs_raw": inline_us / raw_us,
            "threaded_vs_raw": threaded_us / raw_us,
        }
    # Inline attempts abandoned (a GC pause or a busy machine can push one past its slice).
    out["inline_attempts_abandoned"] = inline.stats["restarted"]
    return out


def _compile_figures(wasm: bytes, root: Path) -> dict[str, Any]:
    digest = hashlib.sha256(wasm).hexdigest()
    cfg = wasmtime.Config()
    cfg.consume_fuel = True
    cfg.epoch_interruption = True
    engine = wasmtime.Engine(cfg)
    raw_compile_us = best_us(lambda: wasmtime.Module(engine, wasm), 10, repeat=3)
    artefact = root / "raw.cwasm"
    artefact.write_bytes(wasmtime.Module(engine, wasm).serialize())
    raw_load_us = best_us(lambda: wasmtime.Module.deserialize_file(engine, str(artefact)), 50,
                           repeat=3)

    def sandbox_compile() -> None:
        WasmSandbox(None).cache.load(digest, wasm)  # no cache dir: always compiles

    cache = root / "compile-cache"
    WasmSandbox(cache).cache.load(digest, wasm)  # write the artefact

    def sandbox_load() -> None:
        sandbox = WasmSandbox(cache)
        sandbox.cache.load(digest, wasm)
        assert sandbox.stats["loaded"] == 1

    engine_us = best_us(lambda: WasmSandbox(None), 50, repeat=3)
    compile_us = best_us(sandbox_compile, 10, repeat=3) - engine_us
    load_us = best_us(sandbox_load, 50, repeat=3) - engine_us
    return {
        "module_bytes": len(wasm),
        "raw_compile_us": raw_compile_us,
        "sandbox_compile_us": compile_us,
        "compile_vs_raw": compile_us / raw_compile_us,
        "raw_cached_load_us": raw_load_us,
        "sandbox_cached_load_us": load_us,
        "cached_load_vs_raw": load_us / raw_load_us,
        "cached_load_vs_compile": load_us / compile_us,
    }


async def _kernel_figures(wasm: bytes, root: Path) -> dict[str, Any]:
    sandbox = WasmSandbox(root / "kernel-cache")
    threaded = WasmSandbox(root / "kernel-cache", inline=False)
    async with Kernel.open(root / "bench-threaded.db", sandboxes=[threaded]) as kernel:
        await kernel.register_image(AgentImage(
            "bench", tools=("now", "register_tool"), needs=("clock:*:read", "tool:*:register")))
        pid = kernel.spawn("bench", caps=["clock:*:read", "tool:wasm:register"])
        await kernel.call_tool(pid, "register_tool", {"name": "wasm_now", "lang": "wasm",
                                                      "source": wasm})
        wasm_threaded_us = await best_async_us(
            lambda: kernel.call_tool(pid, "wasm_now", {"n": 1}), 300)
    async with Kernel.open(root / "bench.db", sandboxes=[sandbox]) as kernel:
        await kernel.register_image(AgentImage(
            "bench", tools=("now", "register_tool"), needs=("clock:*:read", "tool:*:register")))
        pid = kernel.spawn("bench", caps=["clock:*:read", "tool:wasm:register"])
        await kernel.call_tool(pid, "register_tool", {"name": "wasm_now", "lang": "wasm",
                                                      "source": wasm})
        proc = kernel.process(pid)
        wasm_us = await best_async_us(lambda: kernel.call_tool(pid, "wasm_now", {"n": 1}), 300)
        builtin_us = await best_async_us(lambda: kernel.call_tool(pid, "now", {}), 300)
        wasm0_us = await best_async_us(lambda: kernel.call_tool(pid, "wasm_now", {"n": 0}), 300)
        dispatch_us = best_us(lambda: kernel.dispatcher.run_now(proc, None, "clock.now", {}),
                               1000)
        abandoned = sandbox.stats["restarted"]
    return {
        "inline_attempts_abandoned": abandoned,
        "wasm_tool_1_syscall_us": wasm_us,
        "wasm_tool_1_syscall_threaded_us": wasm_threaded_us,
        "builtin_tool_same_syscall_us": builtin_us,
        "wasm_tool_0_syscalls_us": wasm0_us,
        "wasm_over_builtin_us": wasm_us - builtin_us,
        "syscall_dispatch_us": dispatch_us,
    }


async def _thread_hop_us() -> float:
    return await best_async_us(lambda: trio.to_thread.run_sync(lambda: None), 1000)


def run() -> dict[str, Any]:
    wasm = bytes(wasmtime.wat2wasm(LOOP_TOOL))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        calls = trio.run(_sandbox_figures, wasm, root)
        hop = trio.run(_thread_hop_us)
        kernel = trio.run(_kernel_figures, wasm, root)
        compile_ = _compile_figures(wasm, root)
    return {"call": calls, "thread_hop_us": hop, "kernel": kernel, "compile": compile_}


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
