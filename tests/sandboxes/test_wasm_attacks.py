"""Attacks on the WASM sandbox, through a real kernel and real Wasmtime.

Each ends in a typed error (or a typed error response to the guest), the broker carries on,
other processes keep being served, and the audit chain still verifies.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgpack
import pytest
import trio

from broker import (
    CallLimits,
    InvalidArgument,
    Kernel,
    LimitExceeded,
    NotCapable,
    ProtocolError,
    SandboxCrashed,
)
from broker.store.audit import CLOSES
from sandboxes.wasm import WasmSandbox
from tests.sandboxes.conftest import limits_for
from tests.sandboxes.test_wasm import (
    CAPS,
    ECHO,
    SPIN_FOREVER,
    SYSCALL,
    lib,
    raw,
    read_args,
    records,
    register,
    start,
    syscall_tool,
)


@pytest.fixture
async def wk(request: pytest.FixtureRequest, db_path: Path,
             tmp_path: Path) -> AsyncIterator[Kernel]:
    limits = CallLimits(deadline=limits_for(request).deadline, fuel=200_000_000, memory_mb=16,
                        max_syscalls=50, max_output_bytes=64 << 10)
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")],
                           call_limits=limits) as k:
        yield k


async def still_serving(k: Kernel, pid: int) -> None:
    """The broker carries on: a normal wasm tool works, and the audit chain verifies."""
    if "echo" not in {t["name"] for t in k.list_tools(pid)}:
        await register(k, pid, "echo", ECHO)
    assert await k.call_tool(pid, "echo", {"still": "here"}) == {"still": "here"}
    count, problems = k.verify_audit()
    assert count > 0 and problems == []


# -- imports -----------------------------------------------------------------------------------

RUN = '(func (export "run") (param i32 i32) (result i64) (i64.const 0))'


@pytest.mark.parametrize("imports", [
    '(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))',
    '(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))',
    '(import "env" "syscall" (func (param i32 i32) (result i64)))',
    '(import "libos" "open" (func (param i32 i32) (result i64)))',
    '(import "libos" "syscall" (func (param i32) (result i64)))',
    '(import "libos" "syscall" (func (param i32 i32) (result i32)))',
    '(import "libos" "syscall" (global i32))',
    '(import "libos" "table" (table 1 funcref))',
])
async def test_imports_outside_the_abi_are_refused(wk: Kernel, imports: str) -> None:
    pid = await start(wk)
    with pytest.raises(InvalidArgument, match=r"import|libos"):
        await register(wk, pid, "sneaky", raw(RUN, imports=imports))
    outcome = records(wk, pid, "tool.register")[-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["error"] == "INVALID_ARGUMENT"
    await still_serving(wk, pid)


async def test_imported_memory_is_refused(wk: Kernel) -> None:
    pid = await start(wk)
    source = raw(RUN, memory='(import "libos" "memory" (memory 1))\n'
                             '(export "memory" (memory 0))')
    with pytest.raises(InvalidArgument, match="libos"):
        await register(wk, pid, "shared_mem", source)


def _library_import(field: str) -> str:
    from sandboxes import wasm_guest

    return field.replace("LIB", wasm_guest.library_module_name())


@pytest.mark.parametrize("imports", [
    '(import "LIB" "mp_nil" (func (param i32)))',                  # wrong type
    '(import "LIB" "heap" (global i32))',                          # immutable: not what it is
    '(import "LIB" "no_such_thing" (func))',
    '(import "LIB" "memory" (memory 1 2)) (export "memory" (memory 0))',  # a maximum
    '(import "LIB" "memory" (memory 3)) (export "memory" (memory 0))',    # a larger minimum
    '(import "libos:lib@0000000000000000" "mp_nil" (func))',       # another library's
    '(import "LIB" "mp_nil" (func))',  # right, but beside a memory of its own: two a call
])
async def test_bad_imports_from_the_guest_library_are_refused(wk: Kernel, imports: str) -> None:
    pid = await start(wk)
    source = raw(RUN, memory=_library_import(imports)) if '"memory"' in imports else raw(
        RUN, imports=_library_import(imports))
    with pytest.raises(InvalidArgument, match=r"import|library"):
        await register(wk, pid, "sneaky", source)
    outcome = records(wk, pid, "tool.register")[-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["error"] == "INVALID_ARGUMENT"
    # the neighbour: the library's memory and a function, imported as they are, link and run
    await register(wk, pid, "fine", raw(RUN, memory=_library_import(
        '(import "LIB" "memory" (memory 2)) (export "memory" (memory 0))'), imports=_library_import(
        '(import "LIB" "mp_nil" (func))')))
    assert await wk.call_tool(pid, "fine", {}) is None
    await still_serving(wk, pid)


async def test_wasi_module_in_binary_form_is_refused(wk: Kernel) -> None:
    import wasmtime

    pid = await start(wk)
    binary = bytes(wasmtime.wat2wasm(raw(RUN, imports=(
        '(import "wasi_snapshot_preview1" "fd_write" '
        '(func (param i32 i32 i32 i32) (result i32)))'))))
    with pytest.raises(InvalidArgument, match=r"wasi_snapshot_preview1\.fd_write"):
        await register(wk, pid, "wasi", binary, lang="wasm")


# -- pointers ----------------------------------------------------------------------------------

def wat_data(data: bytes) -> str:
    """Bytes as a WAT string literal."""
    return '"' + "".join(f"\\{b:02x}" for b in data) + '"'


NOW_REQUEST = msgpack.packb({"name": "clock.now", "args": {}})

def bad_pointer_tool(ptr: int, length: int) -> str:
    """Passes (ptr, len) to libos.syscall and returns the response's code as its value."""
    return lib(f"""
  (data (i32.const 1024) "code")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $r_set (call $libos_syscall (i32.const {ptr}) (i32.const {length})))
    (if (i32.eqz (call $mp_find (i32.const 1024) (i32.const 4))) (then (unreachable)))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))""")


@pytest.mark.parametrize(("ptr", "length"), [
    (0xFFFF_0000, 100),         # past the end of memory
    (131_072, 1),               # one byte past the guest library's 2-page memory
    (0xFFFF_FFF0, 0x20),        # ptr + len wraps around 2**32
    (16, 0xFFFF_FFFF),          # a length as large as can be
    (0x7FFF_FFFF, 0x7FFF_FFFF),  # both halves large; their sum overflows i32
])
async def test_out_of_bounds_and_overflowing_pointers_get_invalid_argument(
        wk: Kernel, ptr: int, length: int) -> None:
    pid = await start(wk)
    signed = lambda v: v - (1 << 32) if v >= 1 << 31 else v  # noqa: E731
    await register(wk, pid, "oob", bad_pointer_tool(signed(ptr), signed(length)))
    # The guest got an error *response* (it read the code out of it), not a crash.
    assert await wk.call_tool(pid, "oob", {}) == "INVALID_ARGUMENT"
    await still_serving(wk, pid)


async def test_overlapping_request_and_response_regions_are_harmless(wk: Kernel) -> None:
    """An allocator that always returns the same pointer: the response overwrites the
    request, which the host has already copied out."""
    pid = await start(wk)
    source = raw(f"""
  (data (i32.const 4096) {wat_data(NOW_REQUEST)})
  (func (export "run") (param i32 i32) (result i64)
    (call $syscall (i32.const 4096) (i32.const {len(NOW_REQUEST)})))""",
                 imports=SYSCALL,
                 alloc="""
  (global $first (mut i32) (i32.const 1))
  (func (export "alloc") (param i32) (result i32)
    ;; the arguments go to 8192; every response to 4096, over the request
    (if (global.get $first) (then (global.set $first (i32.const 0)) (return (i32.const 8192))))
    (i32.const 4096))""")
    await register(wk, pid, "overlap", source)
    assert isinstance(await wk.call_tool(pid, "overlap", {}), float)
    assert [r["phase"] for r in records(wk, pid, "clock.now")] == ["intent+outcome"]


@pytest.mark.parametrize(("request_bytes", "error"), [
    (b"\xc1", "INVALID_ARGUMENT"),                                       # not msgpack
    (msgpack.packb([1, 2, 3]), "INVALID_ARGUMENT"),                      # not a map
    (msgpack.packb({"name": 1}), "INVALID_ARGUMENT"),                    # name not a str
    (msgpack.packb({"name": "clock.now", "pid": 2}), "INVALID_ARGUMENT"),  # claims identity
    (msgpack.packb({"name": "fs.mount"}), "NOT_CAPABLE"),                # no such syscall
    (NOW_REQUEST + b"\xc0", "INVALID_ARGUMENT"),                         # trailing bytes
    (msgpack.packb({"name": "clock.now", "args": msgpack.ExtType(1, b"x")}),
     "INVALID_ARGUMENT"),                                                 # an ext value
    (msgpack.packb({"name": "clock.now", "args": {"x": 1}}), "INVALID_ARGUMENT"),  # schema
    (msgpack.packb({"name": "fs.read", "args": {"path": "/../../etc/passwd"}}),
     "NOT_CAPABLE"),
    (b"\x81\xa4name" + b"\xdb\xff\xff\xff\xff", "INVALID_ARGUMENT"),   # a 4 GiB str header
])
async def test_malformed_requests_are_answered_with_typed_errors(
        wk: Kernel, request_bytes: bytes, error: str) -> None:
    pid = await start(wk)
    await register(wk, pid, "malformed", lib(f"""
  (data (i32.const 2048) {wat_data(request_bytes)})
  (data (i32.const 1024) "code")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $r_set (call $libos_syscall (i32.const 2048) (i32.const {len(request_bytes)})))
    (if (i32.eqz (call $mp_find (i32.const 1024) (i32.const 4))) (then (unreachable)))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))"""))
    assert await wk.call_tool(pid, "malformed", {}) == error
    await still_serving(wk, pid)


# -- resource bombs ----------------------------------------------------------------------------

@pytest.mark.slow_ok  # on a loaded machine 200M fuel can outlast 2 s
async def test_infinite_loop_runs_out_of_fuel(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "spin", SPIN_FOREVER)
    with pytest.raises(LimitExceeded, match="fuel"):
        await wk.call_tool(pid, "spin", {})
    await still_serving(wk, pid)


async def test_infinite_loop_hits_the_deadline(db_path: Path, tmp_path: Path) -> None:
    limits = CallLimits(deadline=0.3, fuel=10**15)
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")],
                           call_limits=limits) as k:
        pid = await start(k)
        await register(k, pid, "spin", SPIN_FOREVER)
        began = time.monotonic()
        with pytest.raises(LimitExceeded, match="deadline"):
            await k.call_tool(pid, "spin", {})
        assert time.monotonic() - began < 1.5
        await still_serving(k, pid)


async def test_infinite_loop_in_the_start_function(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "bad_start", raw(RUN + '\n(func $s (loop $l (br $l)))\n(start $s)'))
    with pytest.raises(LimitExceeded):
        await wk.call_tool(pid, "bad_start", {})
    await still_serving(wk, pid)


GROW_UNTIL_REFUSED = raw("""
  (func (export "run") (param i32 i32) (result i64)
    (loop $grow
      (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (unreachable))""")

GROW_FOREVER = raw("""
  (func (export "run") (param i32 i32) (result i64)
    (loop $grow
      (drop (memory.grow (i32.const 1)))
      (br $grow))
    (i64.const 0))""")


async def test_memory_grow_bomb(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "grow", GROW_UNTIL_REFUSED)
    with pytest.raises(LimitExceeded, match="memory limit of 16 MiB"):
        await wk.call_tool(pid, "grow", {})
    await register(wk, pid, "grow_forever", GROW_FOREVER)
    with pytest.raises(LimitExceeded):
        await wk.call_tool(pid, "grow_forever", {})
    await still_serving(wk, pid)


async def test_memory_minimum_above_the_limit(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "huge_min", raw(RUN, memory='(memory (export "memory") 1000)'))
    with pytest.raises(LimitExceeded, match="memory"):
        await wk.call_tool(pid, "huge_min", {})
    await still_serving(wk, pid)


async def test_guest_allocator_out_of_memory(wk: Kernel) -> None:
    """The guest library's own allocator fails the call with LIMIT_EXCEEDED when memory
    cannot grow any more."""
    pid = await start(wk)
    await register(wk, pid, "hog", lib("""
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (loop $more
      (br_if $more (call $alloc (i32.const 1048576))))
    (call $oom)
    (i64.const 0))"""))
    with pytest.raises(LimitExceeded, match="out of memory"):
        await wk.call_tool(pid, "hog", {})


async def test_unbounded_recursion_is_a_limit(wk: Kernel) -> None:
    """Stack overflow → LimitExceeded: the wasm stack is a bounded resource (512 KiB), like
    memory or fuel; the same tool would finish under a larger limit, so it is not a crash."""
    pid = await start(wk)
    await register(wk, pid, "recurse", raw("""
  (func $down (param $n i64) (result i64)
    (i64.add (call $down (i64.add (local.get $n) (i64.const 1))) (i64.const 1)))
  (func (export "run") (param i32 i32) (result i64)
    (call $down (i64.const 0)))"""))
    with pytest.raises(LimitExceeded, match="stack overflow"):
        await wk.call_tool(pid, "recurse", {})
    await still_serving(wk, pid)


async def test_other_traps_are_sandbox_crashes(wk: Kernel) -> None:
    pid = await start(wk)
    for name, body in [
        ("unreachable", "(unreachable)"),
        ("oob_load", "(drop (i64.load (i32.const 0x7fffffff))) (i64.const 0)"),
        ("div_zero", "(drop (i32.div_u (i32.const 1) (i32.sub (local.get 1) (local.get 1))))"
                     " (i64.const 0)"),
    ]:
        source = raw(f'(func (export "run") (param i32 i32) (result i64) {body})')
        await register(wk, pid, name, source)
        with pytest.raises(SandboxCrashed, match="wasm trap"):
            await wk.call_tool(pid, name, {})
    await still_serving(wk, pid)


# -- responses and results ---------------------------------------------------------------------

async def test_huge_syscall_response_is_limit_exceeded(db_path: Path, tmp_path: Path) -> None:
    sandbox = WasmSandbox(tmp_path / "cache", max_message_bytes=64 << 10)
    async with Kernel.open(db_path, sandboxes=[sandbox]) as k:
        pid = await start(k)
        await k.call_tool(pid, "write_file", {"path": "/data/big", "data": "x" * (100 << 10)})
        await register(k, pid, "slurp", syscall_tool("fs.read", read_args()))
        with pytest.raises(LimitExceeded, match="response of"):
            await k.call_tool(pid, "slurp", {"path": "/data/big"})
        # the read itself happened and was audited; only its delivery was refused
        assert [r["phase"] for r in records(k, pid, "fs.read")] == ["intent+outcome"]
        await still_serving(k, pid)


async def test_response_that_does_not_fit_in_memory(db_path: Path, tmp_path: Path) -> None:
    limits = CallLimits(memory_mb=1)
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")],
                           call_limits=limits) as k:
        pid = await start(k)
        await k.call_tool(pid, "write_file", {"path": "/data/big", "data": "y" * (2 << 20)})
        await register(k, pid, "slurp", syscall_tool("fs.read", read_args()))
        with pytest.raises(LimitExceeded, match="allocator could not give"):
            await k.call_tool(pid, "slurp", {"path": "/data/big"})
        await still_serving(k, pid)


async def test_trap_inside_a_host_call(wk: Kernel) -> None:
    """`alloc` traps while the host is delivering a syscall response: the call ends with
    a typed error; the syscall had already happened and is audited once."""
    pid = await start(wk)
    source = raw(f"""
  (data (i32.const 4096) {wat_data(NOW_REQUEST)})
  (func (export "run") (param i32 i32) (result i64)
    (call $syscall (i32.const 4096) (i32.const {len(NOW_REQUEST)})))""", imports=SYSCALL, alloc="""
  (global $calls (mut i32) (i32.const 0))
  (func (export "alloc") (param $n i32) (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    ;; the first allocation (the arguments) works; the second (the response) traps
    (if (i32.gt_u (global.get $calls) (i32.const 1)) (then (unreachable)))
    (i32.const 1024))""")
    await register(wk, pid, "trap_in_host", source)
    with pytest.raises(SandboxCrashed, match="alloc trapped during a host call"):
        await wk.call_tool(pid, "trap_in_host", {})
    assert [r["phase"] for r in records(wk, pid, "clock.now")] == ["intent+outcome"]
    await still_serving(wk, pid)


async def test_allocator_returning_garbage(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "null_alloc", raw(
        RUN, alloc='(func (export "alloc") (param i32) (result i32) (i32.const 0))'))
    with pytest.raises(LimitExceeded, match="allocator"):
        await wk.call_tool(pid, "null_alloc", {})
    await register(wk, pid, "wild_alloc", raw(
        RUN, alloc='(func (export "alloc") (param i32) (result i32) (i32.const -16))'))
    with pytest.raises(SandboxCrashed, match="outside memory"):
        await wk.call_tool(pid, "wild_alloc", {})
    await still_serving(wk, pid)


@pytest.mark.parametrize(("ret", "error", "fragment"), [
    ("(i64.const 0x7fffffff_00000010)", SandboxCrashed, "outside its memory"),
    ("(i64.const 0x00001000_00000003)", ProtocolError, "malformed result"),
    ("(i64.const 0x00001000_7fffffff)", LimitExceeded, "output limit"),
])
async def test_bad_results(wk: Kernel, ret: str, error: type[Exception], fragment: str) -> None:
    pid = await start(wk)
    await register(wk, pid, "bad_result", raw(
        f'(data (i32.const 4096) "\\c1\\c1\\c1")\n'
        f'(func (export "run") (param i32 i32) (result i64) {ret})'))
    with pytest.raises(error, match=fragment):
        await wk.call_tool(pid, "bad_result", {})
    await still_serving(wk, pid)


async def test_result_envelope_must_be_exact(wk: Kernel) -> None:
    pid = await start(wk)
    # {ok: true, value: 1, pid: 2}: an extra key is refused, not ignored
    await register(wk, pid, "extra", raw(
        '(data (i32.const 4096) "\\83\\a2ok\\c3\\a5value\\01\\a3pid\\02")\n'
        '(func (export "run") (param i32 i32) (result i64) (i64.const 0x00001000_00000011))'))
    with pytest.raises(ProtocolError, match="ok: true"):
        await wk.call_tool(pid, "extra", {})


# -- rates and output --------------------------------------------------------------------------

@pytest.mark.slow_ok  # the syscall cap, not the deadline: a loaded machine is slow to commit 50
async def test_syscall_flood_is_cut_off(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "flood", lib("""
  (data (i32.const 1024) "clock.now")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (loop $again
      (call $sys_begin (i32.const 1024) (i32.const 9))
      (call $mp_map (i32.const 0))
      (drop (call $sys_call))
      (br $again))
    (i64.const 0))"""))
    with pytest.raises(LimitExceeded, match="more than 50 syscalls"):
        await wk.call_tool(pid, "flood", {})
    now = records(wk, pid, "clock.now")
    assert sum(r["phase"] in CLOSES for r in now) == 50
    assert sum(r["phase"] == "rejected" for r in now) == 1
    await still_serving(wk, pid)


@pytest.mark.slow_ok
async def test_refused_syscalls_count_too(wk: Kernel) -> None:
    """Unknown names are refused and counted: the 51st attempt ends the call."""
    pid = await start(wk)
    await register(wk, pid, "flood", lib("""
  (data (i32.const 1024) "no.such")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (loop $again
      (call $sys_begin (i32.const 1024) (i32.const 7))
      (call $mp_map (i32.const 0))
      (drop (call $sys_call))
      (br $again))
    (i64.const 0))"""))
    with pytest.raises(LimitExceeded, match="more than 50 syscalls"):
        await wk.call_tool(pid, "flood", {})
    refused = [r for r in wk.audit(pid) if r["phase"] in ("denied", "rejected")]
    assert len(refused) == 51
    assert refused[-1]["detail"]["error"] == "LIMIT_EXCEEDED"
    await still_serving(wk, pid)


@pytest.mark.slow_ok
async def test_malformed_syscall_requests_count_too(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "flood", lib("""
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (loop $again
      (drop (call $libos_syscall (i32.const -100) (i32.const 1000)))
      (br $again))
    (i64.const 0))"""))
    with pytest.raises(LimitExceeded, match="more than 50 syscalls"):
        await wk.call_tool(pid, "flood", {})
    await still_serving(wk, pid)


async def test_log_flood_is_cut_off(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "chatty", lib("""
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (loop $again
      (call $log (i32.const 1) (i32.const 2048) (i32.const 4000))
      (br $again))
    (i64.const 0))"""))
    with pytest.raises(LimitExceeded, match="output"):
        await wk.call_tool(pid, "chatty", {})
    await still_serving(wk, pid)


async def test_log_with_a_bad_region_is_refused_not_fatal(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "bad_log", lib("""
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $ret_begin)
    (call $mp_int (i64.extend_i32_u
      (call $libos_log (i32.const 1) (i32.const -100) (i32.const 1000))))
    (call $ret_end))"""))
    assert await wk.call_tool(pid, "bad_log", {}) == 1


async def test_fail_with_a_bad_region(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "bad_fail", lib("""
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $libos_fail (i32.const -1) (i32.const 100) (i32.const 0) (i32.const 0))
    (i64.const 0))"""))
    with pytest.raises(InvalidArgument, match=r"libos\.fail"):
        await wk.call_tool(pid, "bad_fail", {})


# -- the broker keeps serving ------------------------------------------------------------------

async def test_other_processes_are_served_while_a_tool_spins(db_path: Path,
                                                              tmp_path: Path) -> None:
    limits = CallLimits(deadline=1.5, fuel=10**15)
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")],
                           call_limits=limits) as k:
        spinner = await start(k)
        other = k.spawn("wasm-agent", caps=["fs:/data/**:read,write"])
        await k.call_tool(other, "write_file", {"path": "/data/o.txt", "data": "other"})
        await register(k, spinner, "spin", SPIN_FOREVER)
        spin_done = trio.Event()
        served: list[float] = []

        async def spin() -> None:
            with pytest.raises(LimitExceeded, match="deadline"):
                await k.call_tool(spinner, "spin", {})
            spin_done.set()

        async def serve() -> None:
            await trio.sleep(0.2)  # the spinner is in its thread by now
            began = time.monotonic()
            for _ in range(20):
                assert await k.call_tool(other, "read_file", {"path": "/data/o.txt"}) == "other"
            served.append(time.monotonic() - began)
            assert not spin_done.is_set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(spin)
            nursery.start_soon(serve)
        assert served and served[0] < 1.0
        assert [r["phase"] for r in records(k, other, "fs.read")].count("intent+outcome") == 20
        await still_serving(k, spinner)


async def test_no_capability_no_effect(wk: Kernel) -> None:
    """A tool has no authority of its own: it gets the calling process's, and a process
    without fs rights gets NOT_CAPABLE from inside wasm, audited as a denial."""
    pid = await start(wk, caps=["tool:*:register", "fs:/data/**:read,write"])
    other = wk.spawn("wasm-agent", caps=["tool:*:register"])
    await wk.call_tool(pid, "write_file", {"path": "/data/secret", "data": "s"})
    await register(wk, other, "slurp", syscall_tool("fs.read", read_args()))
    with pytest.raises(NotCapable):
        await wk.call_tool(other, "slurp", {"path": "/data/secret"})
    assert records(wk, other, "fs.read")[-1]["phase"] == "denied"


# Eleven passive data segments, `memory.init 10` copies one byte of data segment 10. Linked,
# the tool's own segments are numbered from 0 ("K" is 10); in the whole module (what is stored
# and hashed) the library's ten active segments come first, so segment 10 is the tool's "A".
DATA_BY_INDEX = lib("""
  (data "A") (data "B") (data "C") (data "D") (data "E") (data "F") (data "G") (data "H")
  (data "I") (data "J") (data "K")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    {hidden}(memory.init {index} (i32.const 2048) (i32.const 0) (i32.const 1))
    (call $ret_begin)
    (call $mp_int (i64.extend_i32_u (i32.load8_u (i32.const 2048))))
    (call $ret_end))""")


@pytest.mark.parametrize(("hidden", "index"), [
    ("", "10"), (";; a line comment ends at a CR too\r", "10"), ("", "+10"),
    ("", "(@an annotation) 10")])
async def test_a_data_segment_by_index_means_the_same_linked_and_whole(
        wk: Kernel, hidden: str, index: str) -> None:
    """Attack: a tool that behaves one way while served linked (just registered) and another
    once its whole module (the registered, hashed one) replaces it. A data segment named by
    index is numbered differently in the two forms, so such a tool must not be linked; nor
    may the index hide where the assembler sees code (after a CR ending a line comment), be
    written `+10` or stand after an annotation."""
    wasm = wk.sandboxes["wat"]
    assert isinstance(wasm, WasmSandbox)
    with compiles_held(wasm):
        pid = await start(wk)
        source = DATA_BY_INDEX.replace("{hidden}", hidden).replace("{index}", index)
        spec = await register(wk, pid, "by_index", source)
        first = await wk.call_tool(pid, "by_index", {})
    await trio.to_thread.run_sync(wasm.cache.flush)
    assert wasm.cache.entries[spec["hash"]].links is None  # the whole module serves now
    assert await wk.call_tool(pid, "by_index", {}) == first == ord("A")
    await still_serving(wk, pid)


def scribbler(fill: int, end: str) -> str:
    """Fills 6 pages (past the 256 KiB zeroed in place) and a table and a global, then ends
    as `end` says: a return, a trap, fuel run out, or a grow past its memory limit."""
    ending = {"return": "(i64.const 0)",
              "trap": "(unreachable)",
              "fuel": "(loop $l (br $l)) (i64.const 0)",
              "memory": "(drop (memory.grow (i32.const 100000))) (unreachable)"}[end]
    return raw(f"""
  (table $t 8 funcref)
  (global $g (mut i32) (i32.const 0))
  (func $f)
  (func (export "run") (param i32 i32) (result i64)
    (drop (memory.grow (i32.const 5)))
    (memory.fill (i32.const 0) (i32.const {fill}) (i32.const 393216))
    (table.fill $t (i32.const 0) (ref.func $f) (i32.const 8))
    (global.set $g (i32.const {fill}))
    {ending})
  (elem declare func $f)""")


@pytest.mark.parametrize("end", ["return", "trap", "fuel", "memory"])
async def test_a_slot_left_by_any_ending_comes_back_fresh_to_another_module(
        db_path: Path, tmp_path: Path, end: str) -> None:
    """Attack on the pool: two scribbling modules take every memory slot of the engine (one
    threaded call and one inline call: two), each ending its own way; a module never run
    before must then take a slot another module used, and sees only its own initial memory.
    (A slot keeps an affinity for the module that last used it; a probe that runs first gets
    a slot of its own again and never meets a scribbler's.)"""
    sandbox = WasmSandbox(tmp_path / "cache", inline=False, max_threaded_calls=1)
    limits = CallLimits(deadline=5.0, fuel=20_000_000, memory_mb=8)
    async with Kernel.open(db_path, sandboxes=[sandbox], call_limits=limits) as k:
        pid = await start(k)
        await scribble_then_probe(k, pid, end)
        await still_serving(k, pid)


# A prelude marker inside a comment: spliced in, the library's newline would end the comment,
# bringing the exports by index after it to life (linked and whole forms differing).
MARKER_IN_A_COMMENT = ('(module\n  ;; (module (;libos:prelude;) (export "e0" (func 0))\n'
                       '  (memory (export "memory") 1)\n'
                       '  (func (export "run") (param i32 i32) (result i64) (i64.const 0)))\n')


async def test_a_prelude_marker_inside_a_comment_is_no_marker(wk: Kernel) -> None:
    from sandboxes import wasm_guest

    assert wasm_guest.expand(MARKER_IN_A_COMMENT) == MARKER_IN_A_COMMENT
    assert wasm_guest.link(MARKER_IN_A_COMMENT, {}) is None
    pid = await start(wk)
    with pytest.raises(InvalidArgument):  # a module of its own, without the library's ABI
        await register(wk, pid, "commented", MARKER_IN_A_COMMENT)
    outcome = records(wk, pid, "tool.register")[-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["error"] == "INVALID_ARGUMENT"
    await still_serving(wk, pid)


# -- an engine with no room for a pool: each call's memory mapped on demand --------------------

TABLE_GROWER = lib("""
  (table $grown 1 funcref)
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (loop $more
      (br_if $more (i32.ne (table.grow $grown (ref.null func) (i32.const 1000))
                           (i32.const -1))))
    (call $ret_begin)
    (call $mp_int (i64.extend_i32_u (table.size $grown)))
    (call $ret_end))""")


@pytest.mark.parametrize("end", ["return", "trap", "fuel", "memory"])
async def test_on_demand_memory_is_fresh_per_call_and_still_bounded(
        db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, end: str) -> None:
    """Attack on the fallback (an engine made when the address space has no room for a pool):
    what the pool's slots bounded and wiped, the store's own limits and a fresh mapping must.
    Scribblers fill memory, a table and a global and end their own way; a probe run after
    them sees only its own initial memory, twice; a memory bomb and a table bomb stop at the
    call's limits (typed, audited); a neighbour's tool is still served."""
    from sandboxes import wasm_cache

    monkeypatch.setattr(wasm_cache, "_room_for", lambda size: False)
    sandbox = WasmSandbox(tmp_path / "cache", inline=False, max_threaded_calls=1,
                          max_table_elements=5_000)
    assert not sandbox.pooled
    limits = CallLimits(deadline=5.0, fuel=20_000_000, memory_mb=16)
    async with Kernel.open(db_path, sandboxes=[sandbox], call_limits=limits) as k:
        pid = await start(k)
        await scribble_then_probe(k, pid, end)
        await register(k, pid, "grow", GROW_UNTIL_REFUSED)
        with pytest.raises(LimitExceeded, match="memory limit of 16 MiB"):
            await k.call_tool(pid, "grow", {})
        outcome = [r for r in records(k, pid, "tool.call") if r["phase"] in CLOSES][-1]
        assert outcome["resource"] == "grow"
        assert outcome["detail"]["error"] == "LIMIT_EXCEEDED"
        await register(k, pid, "tables", TABLE_GROWER)
        assert await k.call_tool(pid, "tables", {}) <= 5_000
        await still_serving(k, pid)


def constant(value: int) -> str:
    return lib(f"""
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $ret_begin) (call $mp_int (i64.const {value})) (call $ret_end))""")


async def test_a_replaced_tool_runs_its_new_code_whatever_the_caches_hold(wk: Kernel) -> None:
    """Attack on the caches kept from registration (the kernel's sources, the linked forms,
    the whole modules waiting for their background compile): a tool replaced while its old
    code's whole module is still waiting to be compiled runs the new code at once and after
    every compile; another process registering the old text under the same name gets the old
    code, and the first keeps the new; a replace that is refused leaves the tool as it was."""
    wasm = wk.sandboxes["wat"]
    assert isinstance(wasm, WasmSandbox)
    with compiles_held(wasm):
        pid = await start(wk)
        old = await register(wk, pid, "t", constant(1))
        assert await wk.call_tool(pid, "t", {}) == 1
        new = await wk.call_tool(pid, "register_tool", {
            "name": "t", "lang": "wat", "source": constant(2), "replace": True})
        assert new["hash"] != old["hash"]
        assert await wk.call_tool(pid, "t", {}) == 2
        other = wk.spawn("wasm-agent", caps=CAPS)
        await register(wk, other, "t", constant(1))
        assert await wk.call_tool(other, "t", {}) == 1
        assert await wk.call_tool(pid, "t", {}) == 2
        with pytest.raises(InvalidArgument):
            await wk.call_tool(pid, "register_tool", {
                "name": "t", "lang": "wat", "source": "(module (func $broken", "replace": True})
        refused = records(wk, pid, "tool.register")[-1]
        assert refused["phase"] == "outcome" and refused["detail"]["error"] == "INVALID_ARGUMENT"
    await trio.to_thread.run_sync(wasm.cache.flush)
    assert wasm.cache.entries[new["hash"]].links is None  # the whole modules serve now
    assert wasm.cache.entries[old["hash"]].links is None
    assert [await wk.call_tool(p, "t", {}) for p in (pid, other, pid)] == [2, 1, 2]
    await still_serving(wk, pid)


async def scribble_then_probe(k: Kernel, pid: int, end: str) -> None:
    """Two scribblers fill memory, tables and data and end their way (`end`); a probe then
    sees only its own initial state, twice."""
    from tests.sandboxes.test_wasm import PROBE
    for fill in (0x77, 0x66):
        await register(k, pid, f"scribble{fill}", scribbler(fill, end))
        if end == "return":
            assert await k.call_tool(pid, f"scribble{fill}", {}) is None
        else:
            with pytest.raises((LimitExceeded, SandboxCrashed)):
                await k.call_tool(pid, f"scribble{fill}", {})
    await register(k, pid, "probe", PROBE)
    for _ in range(2):
        assert await k.call_tool(pid, "probe", {}) == [2, 0, ord("A"), 0, 0]


@contextlib.contextmanager
def compiles_held(wasm: WasmSandbox) -> Iterator[None]:
    """Every background compile of `wasm` waits (its one writer thread held) until the block
    ends: tools are served linked meanwhile."""
    gate = threading.Event()
    wasm.cache._writer.submit(gate.wait, 10)
    try:
        yield
    finally:
        gate.set()
