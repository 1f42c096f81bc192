"""Compiling a hostile module is bounded (`sandboxes/wasm_compile.py`): shapes Cranelift takes
seconds to minutes over are compiled in a child with a CPU limit and refused with
`LimitExceeded` (audited), while tools of ordinary size compile in the broker as before.
Real kernel, real Wasmtime, a real child process."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from broker import CallLimits, InvalidArgument, Kernel, LimitExceeded
from sandboxes import wasm_cache, wasm_compile
from sandboxes.wasm import WasmSandbox
from sandboxes.wasm_compile import SMALL_FUNCTION, compile_in_child, cost, is_small
from sandboxes.wasm_config import engine_config
from tests.sandboxes.test_bounded_caches import _leb
from tests.sandboxes.test_wasm import raw, records, register, start
from tests.sandboxes.test_wasm_attacks import RUN, still_serving

# A loop per update of a local: Cranelift's time grows with the square of the loops (4,000
# took 1.2 s of CPU, 20,000 about 30 s; the module is 17 bytes a loop).
LOOPS = '(func (param i32) (local i32) {} )'.format(
    "(loop (local.set 0 (i32.add (local.get 0) (i32.const 1)))"
    " (br_if 0 (i32.lt_u (local.get 0) (i32.const 10))))" * 8000)


def many_locals(functions: int, locals_: int) -> bytes:
    """`functions` functions that each declare `locals_` i32 locals in 3 bytes (and do
    nothing): 100 of 50,000 took 0.26 s, so 2,000 (16 KB) take seconds."""
    def section(n: int, body: bytes) -> bytes:
        return bytes([n]) + _leb(len(body)) + body
    body = _leb(1) + _leb(locals_) + b"\x7f\x0b"
    return (b"\0asm\x01\0\0\0" + section(1, b"\x01\x60\x00\x00")
            + section(3, _leb(functions) + b"\x00" * functions)
            + section(10, _leb(functions) + (_leb(len(body)) + body) * functions))


def hostile_wasm(shape: str) -> bytes:
    """A module that passes the ABI check but for its compile time."""
    if shape == "loops":
        return bytes(wasmtime.wat2wasm(raw(RUN + LOOPS)))
    return many_locals(2000, 50_000)


@pytest.fixture
async def ck(db_path: Path, tmp_path: Path) -> AsyncIterator[Kernel]:
    limits = CallLimits(deadline=10.0, fuel=200_000_000, memory_mb=16)
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache", compile_seconds=1)],
                           call_limits=limits) as k:
        yield k


def test_locals_weigh_as_much_as_code() -> None:
    """A function's weight is its body and the locals it declares: 50,000 locals cost
    Cranelift as much as a body of that size, in 3 bytes."""
    wasm = many_locals(1, 50_000)
    assert len(wasm) < 40 and cost(wasm)[0] > SMALL_FUNCTION and not is_small(wasm)
    assert is_small(many_locals(1, 100))
    assert cost(b"\0asm\x01\0\0\0\x0a\x05\x01\xff") is None  # a truncated code section


@pytest.mark.parametrize("shape", ["loops", "locals"])
async def test_a_module_that_takes_cranelift_seconds_is_limit_exceeded(
        ck: Kernel, shape: str) -> None:
    pid = await start(ck)
    wasm = hostile_wasm(shape)
    with pytest.raises(LimitExceeded, match="compile"):
        await register(ck, pid, "slow", wasm, lang="wasm")
    outcome = records(ck, pid, "tool.register")[-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["error"] == "LIMIT_EXCEEDED"
    assert "slow" not in {t["name"] for t in ck.list_tools(pid)}
    await still_serving(ck, pid)


async def test_a_large_tool_compiles_in_the_child_and_runs(ck: Kernel, tmp_path: Path) -> None:
    """Over the small bounds but ordinary: it compiles in the child within its seconds, loads
    into the broker's engine (same settings) and runs; its artefact serves a restart."""
    big = ('(func $big (param i32) (result i32) '
           + "(local.set 0 (i32.add (local.get 0) (i32.const 7)))" * 3000 + "(local.get 0))")
    wasm = bytes(wasmtime.wat2wasm(raw(RUN + big)))
    assert not is_small(wasm)
    pid = await start(ck)
    await register(ck, pid, "big", wasm, lang="wasm")
    sandbox = ck.sandboxes["wasm"]
    assert sandbox.stats["isolated"] == 1
    assert await ck.call_tool(pid, "big", {}) is None
    sandbox.cache.flush()  # its artefact written
    restarted = WasmSandbox(tmp_path / "cache")
    await restarted.prepare("big", "wasm", wasm)
    assert restarted.stats["isolated"] == 0 and restarted.stats["loaded"] == 1
    await restarted.aclose()


async def test_a_large_invalid_module_is_invalid_not_slow(ck: Kernel) -> None:
    pid = await start(ck)
    wasm = bytes(wasmtime.wat2wasm(raw(RUN + LOOPS)))
    # local.get 0, i32.const 1, i32.add: the add made an i64.add, a type error
    broken = wasm.replace(b"\x20\x00\x41\x01\x6a", b"\x20\x00\x41\x01\x7c", 1)
    assert broken != wasm
    with pytest.raises(InvalidArgument, match="invalid module"):
        await register(ck, pid, "broken", broken, lang="wasm")


def test_a_compile_child_over_its_memory_is_limit_exceeded_quickly() -> None:
    """The child's data is bounded (RLIMIT_DATA): the loops module, which grows to ~250 MB
    compiling, aborts at its first allocation over 256 MiB instead of holding its memory until
    its CPU runs out; the error names both bounds. A small module compiles in that bound."""
    engine = wasmtime.Engine(engine_config(1 << 20))
    wasm = hostile_wasm("loops")
    started = time.process_time(), time.monotonic()
    with pytest.raises(LimitExceeded, match="256 MiB of memory"):
        compile_in_child(engine, wasm, max_wasm_stack=1 << 20, seconds=30, memory=256 << 20)
    assert time.monotonic() - started[1] < 30  # ended by its memory, not its 30 s of CPU
    small = bytes(wasmtime.wat2wasm(raw(RUN)))
    assert compile_in_child(engine, small, max_wasm_stack=1 << 20, seconds=5,
                            memory=256 << 20).exports


def test_at_most_two_compile_children_run_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each child may take a core and its memory: a third compile waits for a turn."""
    running, most = 0, 0
    lock = threading.Lock()
    real = subprocess.Popen

    class Counted(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            super().__init__(*args, **kwargs)

        def wait(self, timeout: float | None = None) -> int:
            nonlocal running
            code = super().wait(timeout)
            with lock:
                running -= 1
            return code

    monkeypatch.setattr(wasm_compile.subprocess, "Popen", Counted)
    engine = wasmtime.Engine(engine_config(1 << 20))
    wasm = bytes(wasmtime.wat2wasm(raw(RUN)))
    threads = [threading.Thread(target=compile_in_child, args=(engine, wasm),
                                kwargs={"max_wasm_stack": 1 << 20, "seconds": 10})
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 2


def test_an_artefact_compiled_in_parallel_loads_in_the_serial_engine(tmp_path: Path) -> None:
    """The sandbox's engine compiles on the calling thread (`make_engine`), the compile child
    and the brokers before it on a pool of threads: their artefacts still load, not compiled
    again (what is cached is the same code)."""
    sandbox = WasmSandbox(tmp_path / "cache")
    wasm = bytes(wasmtime.wat2wasm(raw(RUN)))
    digest = hashlib.sha256(wasm).hexdigest()
    cfg = engine_config(512 << 10)
    wasm_cache._pooling(cfg, 1, 10_000, 4)  # as an engine of a broker before this one
    artefact = wasmtime.Module(wasmtime.Engine(cfg), wasm).serialize()
    assert sandbox.cache_dir is not None
    (sandbox.cache_dir / f"{digest}.cwasm").write_bytes(artefact)
    sandbox.cache.load(digest, wasm)
    assert (sandbox.stats["loaded"], sandbox.stats["compiled"]) == (1, 0)


def _segments_in_the_librarys_memory(sandbox: WasmSandbox, count: int) -> bytes:
    """A binary tool over the guest library (its memory imported) with `count` one-byte data
    segments, which wasmtime initialises by a function it compiles."""
    imports = sandbox.cache.library().imports
    fields = "\n".join(imports[n] for n in ("memory", "$alloc"))
    data = "".join(f'(data (i32.const {60000 + i % 1000}) "a")' for i in range(count))
    return bytes(wasmtime.wat2wasm(f"""(module {fields}
  (export "memory" (memory 0)) (export "alloc" (func $alloc)) {data} {RUN})"""))


async def test_a_module_of_many_data_segments_is_limit_exceeded(ck: Kernel) -> None:
    """Attack: 43,000 data segments into an imported memory (350 KB) took Cranelift ~19 s of
    the broker's CPU, in its own process, since only code was weighed. Weighed now, it is
    compiled in the child and refused at its CPU limit; a module of a few segments still
    compiles here, and serves."""
    pid = await start(ck)
    sandbox = ck.sandboxes["wasm"]
    hostile = _segments_in_the_librarys_memory(sandbox, 43_000)
    assert not is_small(hostile)
    with pytest.raises(LimitExceeded, match="compile"):
        await register(ck, pid, "slow", hostile, lang="wasm")
    outcome = records(ck, pid, "tool.register")[-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["error"] == "LIMIT_EXCEEDED"
    few = _segments_in_the_librarys_memory(sandbox, 8)
    assert is_small(few)
    await register(ck, pid, "few", few, lang="wasm")
    assert sandbox.stats["isolated"] == 1  # (the hostile one only)
    assert await ck.call_tool(pid, "few", {}) is None
    await still_serving(ck, pid)


async def test_a_module_of_many_element_segments_is_limit_exceeded(ck: Kernel) -> None:
    """Attack: 99,000 element segments given as expressions (790 KB) took Cranelift 4.5 s of
    the broker's CPU, in its own process. Weighed now, it is compiled in the child and
    refused at its CPU limit (the table it would fill is refused by the ABI check anyway,
    after the compile)."""
    pid = await start(ck)
    elems = "(elem (i32.const 0) funcref (ref.func $f))" * 99_000
    hostile = bytes(wasmtime.wat2wasm(f"(module (table 1 funcref) (func $f) {elems})"))
    assert not is_small(hostile)
    with pytest.raises(LimitExceeded, match="compile"):
        await register(ck, pid, "slow", hostile, lang="wasm")
    outcome = records(ck, pid, "tool.register")[-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["error"] == "LIMIT_EXCEEDED"
    await still_serving(ck, pid)


def _interrupted_children(monkeypatch: pytest.MonkeyPatch, how_many: int) -> list[int]:
    """The first `how_many` compile children are sent SIGINT as soon as they start (what a
    terminal's Ctrl-C does to a child still in its group, between its fork and its setsid):
    the pids of those that were."""
    real, hit = subprocess.Popen, []

    class Interrupted(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if len(hit) < how_many:
                hit.append(self.pid)
                os.kill(self.pid, signal.SIGINT)

    monkeypatch.setattr(wasm_compile.subprocess, "Popen", Interrupted)
    return hit


def test_a_compile_child_a_ctrl_c_ended_before_it_began_is_compiled_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the module's doing, so not a LimitExceeded; a child ended so twice over is."""
    engine = wasmtime.Engine(engine_config(1 << 20))
    wasm = bytes(wasmtime.wat2wasm(raw(RUN)))
    hit = _interrupted_children(monkeypatch, 1)
    assert compile_in_child(engine, wasm, max_wasm_stack=1 << 20, seconds=5).exports
    assert len(hit) == 1
    hit = _interrupted_children(monkeypatch, 1 + wasm_compile.SIGINT_RETRIES)
    with pytest.raises(LimitExceeded):
        compile_in_child(engine, wasm, max_wasm_stack=1 << 20, seconds=5)
    assert len(hit) == 1 + wasm_compile.SIGINT_RETRIES
