"""The compiler tools are compiled with (`sandboxes/wasm_config`): Cranelift, unoptimised. A
tool it compiled still stops at its fuel, its deadline and its stack limit; a tool of any
feature Cranelift took before still registers and runs (Winch, tried, refused some); and an
artefact of another compiler is never run: it is discarded and the module compiled again.
Real kernel, real Wasmtime."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import pytest
import wasmtime

from broker import CallLimits, Kernel, LimitExceeded
from sandboxes import wasm_config, wasm_guest
from sandboxes.wasm import WasmSandbox
from sandboxes.wasm_ffi import use_strategy
from tests.sandboxes.test_wasm import ECHO, SPIN_FOREVER, lib, raw, register, start

x86_64 = platform.machine().lower() in ("x86_64", "amd64")
RECURSE = raw('(func $down (export "run") (param i32 i32) (result i64) '
              '(call $down (local.get 0) (local.get 1)))')
# Valid tools of features Winch lacks, each returning its arguments: a tail call
# (`return_call`), relaxed SIMD.
ECHO_BODY = """
    (call $r_begin (local.get $args) (local.get $len))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))"""
TAIL_CALL = lib("""
  (func $echo (param $args i32) (param $len i32) (result i64)""" + ECHO_BODY + """
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (return_call $echo (local.get $args) (local.get $len)))""")
RELAXED_SIMD = lib("""
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (drop (i64x2.extract_lane 0
      (i32x4.relaxed_trunc_f32x4_s (f32x4.splat (f32.const 9)))))""" + ECHO_BODY)


def _winch_engine() -> wasmtime.Engine:
    """An engine of the same settings but another compiler: Winch."""
    cfg = wasm_config.engine_config(512 << 10)
    use_strategy(cfg, "winch")
    return wasmtime.Engine(cfg)


def test_tools_are_compiled_by_cranelift_unoptimised() -> None:
    assert (wasm_config.COMPILER, wasm_config.OPT_LEVEL) == ("cranelift", "none")


async def test_a_tool_of_a_feature_winch_lacks_registers_and_runs(
        db_path: Path, tmp_path: Path) -> None:
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")]) as k:
        pid = await start(k)
        for name, source in (("tail", TAIL_CALL), ("relaxed", RELAXED_SIMD)):
            await register(k, pid, name, source)
            assert await k.call_tool(pid, name, {"n": name}) == {"n": name}


@pytest.mark.slow_ok  # a loaded machine may spend more than 2 s on the fuel
async def test_a_tool_so_compiled_stops_at_its_fuel_deadline_and_stack(tmp_path: Path) -> None:
    async def spin(limits: CallLimits, tool: str, match: str) -> float:
        async with Kernel.open(tmp_path / f"{match}.db",
                               sandboxes=[WasmSandbox(tmp_path / "cache")],
                               call_limits=limits) as k:
            pid = await start(k)
            await register(k, pid, tool, SPIN_FOREVER if tool == "spin" else RECURSE)
            began = time.monotonic()
            with pytest.raises(LimitExceeded, match=match):
                await k.call_tool(pid, tool, {})
            return time.monotonic() - began

    await spin(CallLimits(deadline=60.0, fuel=50_000_000), "spin", "fuel")
    assert await spin(CallLimits(deadline=0.3, fuel=10**15), "spin", "deadline") < 1.5
    await spin(CallLimits(deadline=60.0, fuel=10**15), "recurse", "stack overflow")


@pytest.mark.skipif(not x86_64, reason="Winch compiles for x86-64 only")
async def test_an_artefact_of_another_compiler_is_discarded_and_compiled_again(
        db_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = WasmSandbox(cache)
    async with Kernel.open(db_path, sandboxes=[first]) as k:
        pid = await start(k)
        spec = await register(k, pid, "echo", ECHO)
        assert await k.call_tool(pid, "echo", {"n": 1}) == {"n": 1}
    first.cache.flush()
    (artefact,) = cache.rglob(f"{spec['hash']}.cwasm")
    source = wasmtime.wat2wasm(wasm_guest.expand(ECHO))
    artefact.write_bytes(wasmtime.Module(_winch_engine(), source).serialize())

    second = WasmSandbox(cache)
    async with Kernel.open(db_path, sandboxes=[second]) as k:
        assert await k.call_tool(pid, "echo", {"n": 2}) == {"n": 2}
    assert second.stats["compiled"] == 1 and second.stats["loaded"] == 0

