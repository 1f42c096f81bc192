"""The ABI check reads a module's imports and exports from its bytes (`wasm_interface`), not
through wasmtime-py's type objects: it says what wasmtime says of every module the repo
ships and of one with every kind of import and export; and a tool whose checked import or
export has a `v128` value type is refused with a typed error, where asking wasmtime's C API
the kind of that type aborted the whole broker (each such registration runs in a child
process here, so that a regression fails this test, not the test run). Real Wasmtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

from broker.errors import InvalidArgument
from sandboxes import wasm_guest
from sandboxes.wasm_abi import check_module, signature
from sandboxes.wasm_config import engine_config
from sandboxes.wasm_interface import Unreadable, interface
from tests.sandboxes.test_wasm import raw

ROOT = Path(__file__).resolve().parents[2]
EVERY_KIND = """(module
  (import "a" "f" (func (param i32 f32 f64) (result i64 i32)))
  (import "a" "g" (global (mut i32)))
  (import "a" "h" (global f64))
  (import "a" "m" (memory 1 5))
  (import "a" "t" (table 2 funcref))
  (export "mem" (memory 0))
  (export "f2" (func 0))
  (export "t2" (table 0))
  (global (export "gx") i64 (i64.const 0))
  (func (export "run") (param i32 i32) (result i64) (i64.const 0)))"""


def _wasmtime_view(module: wasmtime.Module) -> tuple[list[object], dict[str, object]]:
    """What wasmtime-py says, in `interface`'s terms (an exported global's type unread)."""
    def extern(ty: object, exported: bool) -> object:
        if isinstance(ty, wasmtime.MemoryType):
            return ("memory", ty.limits.min, ty.limits.max, ty.is_64, ty.is_shared,
                    ty.page_size)
        if isinstance(ty, wasmtime.GlobalType) and exported:
            return ("global",)
        return signature(ty) or ("table",)
    return ([(i.module, i.name, extern(i.type, False)) for i in module.imports],
            {e.name: extern(e.type, True) for e in module.exports})


# Custom sections named like real ones, holding a well-typed `run` (type, then export): the
# real `run` takes one i32. A custom section is skipped whatever its name.
FAKED_BY_CUSTOM = r"""(module (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) (i32.const 0))
  (func (export "run") (param i32) (result i64) (i64.const 0))
  (@custom "type" (before first) "\01\60\02\7f\7f\01\7e")
  (@custom "export" (after export) "\01\03run\00\00"))"""
# An import twice (valid), a host import re-exported as `run`, a reference type and several
# results in signatures, a data count section. (No externref: without a GC heap the engine
# refuses it.)
TWISTED = """(module
  (import "libos" "syscall" (func $s (param i32 i32) (result i64)))
  (import "libos" "syscall" (func (param i32 i32) (result i64)))
  (memory (export "memory") 1 2)
  (export "run" (func $s))
  (func (export "alloc") (param funcref f32) (result i32 i64 funcref)
    (i32.const 0) (i64.const 0) (local.get 0))
  (func (data.drop 0))
  (data "x"))"""


@pytest.mark.parametrize("text", [
    FAKED_BY_CUSTOM,
    TWISTED,
    wasm_guest.library_text(),
    *(wasm_guest.expand(p.read_text()) for p in sorted(wasm_guest.EXAMPLES.glob("*.wat"))),
    EVERY_KIND,
    '(module (memory (export "memory") 1 65536) (func (export "a") (param f64)))',
])
def test_the_interface_read_from_the_bytes_is_wasmtimes(text: str) -> None:
    wasm = bytes(wasmtime.wat2wasm(text))
    module = wasmtime.Module(wasmtime.Engine(engine_config(512 << 10)), wasm)
    imports, exports = interface(wasm)
    assert (imports, exports) == _wasmtime_view(module)


def test_bytes_it_does_not_follow_are_unreadable() -> None:
    wasm = bytes(wasmtime.wat2wasm(EVERY_KIND))
    for bad in (wasm[:-3], b"\0asm\x0d\0\x01\0", wasm[:9] + b"\xff\xff\xff\xff\xff\x0f"):
        with pytest.raises(Unreadable):
            interface(bad)


def test_custom_sections_named_like_real_ones_do_not_change_the_check() -> None:
    with pytest.raises(InvalidArgument, match="must export run"):
        check_module(bytes(wasmtime.wat2wasm(FAKED_BY_CUSTOM)))


def test_a_page_size_the_bytes_make_up_is_unreadable_not_a_huge_integer() -> None:
    """A memory's page size is 2**log2, log2 a LEB128 of the bytes: with 0x08 in its limits'
    flags and log2 = 2**28 - 1, a 32 MiB integer was made (2**35 - 1: 4 GiB, MemoryError,
    not `Unreadable`). Wasmtime refuses such bytes before the reader sees them (custom page
    sizes are off); the reader must still be bounded on any bytes it is given."""
    for log2 in (b"\x11", b"\xff\xff\xff\x7f"):
        body = b"\x01\x08\x01" + log2  # one memory: flags (page size), minimum 1, log2
        wasm = b"\0asm\x01\0\0\0\x05" + bytes([len(body)]) + body
        with pytest.raises(Unreadable, match="page size"):
            interface(wasm)


V128_ALLOC = raw('(func (export "run") (param i32 i32) (result i64) (i64.const 0))',
                 imports='(import "libos" "syscall" (func (param v128 i32) (result i64)))')
V128_RUN = raw('(func (export "run") (param v128 i32) (result i64) (i64.const 0))')
V128_LIBRARY_GLOBAL = raw(
    '(func (export "run") (param i32 i32) (result i64) (i64.const 0))',
    imports=f'(import "{wasm_guest.library_module_name()}" "heap" (global v128))')
_REGISTER = """
import sys, trio
from broker.errors import InvalidArgument
from sandboxes.wasm import WasmSandbox
async def main():
    try:
        await WasmSandbox(None).prepare("t", sys.argv[1], sys.argv[2].encode())
    except InvalidArgument as exc:
        print("refused:", exc.message)
    else:
        print("registered")
trio.run(main)
"""


@pytest.mark.parametrize(("source", "refusal"), [
    (V128_ALLOC, "libos.syscall has the wrong type"),
    (V128_RUN, "must export run"),
    (V128_LIBRARY_GLOBAL, "no such function or global of that type"),
])
def test_a_v128_in_a_checked_type_is_refused_not_a_crash(source: str, refusal: str) -> None:
    done = subprocess.run([sys.executable, "-c", _REGISTER, "wat", source], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused:") and refusal in done.stdout, done.stdout
