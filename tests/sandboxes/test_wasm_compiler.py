"""The compiler tools are compiled with (`sandboxes/wasm_config`): Winch on x86-64, Cranelift
unoptimised elsewhere. A tool it compiled still stops at its fuel, its deadline and its stack
limit, and an artefact of another compiler is never run: it is discarded and the module
compiled again. Real kernel, real Wasmtime."""

from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path

import pytest
import wasmtime

from broker import CallLimits, Kernel, LimitExceeded
from sandboxes import wasm_config, wasm_guest
from sandboxes.wasm import WasmSandbox
from tests.sandboxes.test_wasm import ECHO, SPIN_FOREVER, raw, register, start

x86_64 = platform.machine().lower() in ("x86_64", "amd64")
RECURSE = raw('(func $down (export "run") (param i32 i32) (result i64) '
              '(call $down (local.get 0) (local.get 1)))')


def _cranelift_engine() -> wasmtime.Engine:
    """An engine of the same settings but wasmtime's default compiler (Cranelift, optimised)."""
    cfg = wasm_config.engine_config(512 << 10)
    cfg.strategy = "cranelift"
    cfg.cranelift_opt_level = "speed"
    return wasmtime.Engine(cfg)


def test_tools_are_compiled_by_winch_on_x86_64(tmp_path: Path) -> None:
    assert ("winch" if x86_64 else "cranelift") == wasm_config.COMPILER
    assert wasm_config.OPT_LEVEL == "none"
    if not x86_64:
        return
    sandbox = WasmSandbox(tmp_path / "cache")
    wasm = bytes(wasmtime.wat2wasm(SPIN_FOREVER))
    compiled = sandbox.cache.load(hashlib.sha256(wasm).hexdigest(), wasm).module.serialize()
    # What wasmtime says of Winch's code to an engine of the other compiler.
    with pytest.raises(wasmtime.WasmtimeError, match="Winch"):
        wasmtime.Module.deserialize(_cranelift_engine(), compiled)


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
    artefact.write_bytes(wasmtime.Module(_cranelift_engine(), source).serialize())

    second = WasmSandbox(cache)
    async with Kernel.open(db_path, sandboxes=[second]) as k:
        assert await k.call_tool(pid, "echo", {"n": 2}) == {"n": 2}
    if x86_64:  # (elsewhere the compilers agree: the artefact loads)
        assert second.stats["compiled"] == 1 and second.stats["loaded"] == 0

