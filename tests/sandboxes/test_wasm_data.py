"""A linked form's data segments written by the host (`sandboxes/wasm_data.py`): the tool sees
the same memory, and the same errors, linked (just registered) as whole, and its linked form
compiles no initialisation of its own."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import wasmtime

from broker import Kernel, LibosError
from sandboxes.wasm import WasmSandbox
from sandboxes.wasm_data import MAX_SEGMENTS, split_data
from sandboxes.wasm_entry import CompiledModule
from tests.sandboxes.test_wasm import lib, records, register, start
from tests.sandboxes.test_wasm_attacks import compiles_held, still_serving

# Returns the 8 bytes at 1024 as a msgpack bin: what the tool's data put there.
READ_1024 = """
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $ret_begin)
    (call $mp_bin (i32.const 1024) (i32.const 8))
    (call $ret_end))"""
# A start function that needs the data in place: byte 1031 = byte 1024 - 32 ("A" -> "!").
START = """
  (func $init (i32.store8 (i32.const 1031) (i32.sub (i32.load8_u (i32.const 1024))
                                                     (i32.const 32))))
  (start $init)"""


def reader(data: str, *, with_start: bool = False) -> str:
    """A tool with `data` (its segments) returning memory[1024:1032]."""
    return lib(data + (START if with_start else "") + READ_1024)


@pytest.fixture
def wasm(tmp_path: Path) -> WasmSandbox:
    return WasmSandbox(tmp_path / "wasm-cache")


@pytest.fixture
async def wk(db_path: Path, wasm: WasmSandbox) -> AsyncIterator[Kernel]:
    async with Kernel.open(db_path, sandboxes=[wasm]) as k:
        yield k


def _entry(wasm: WasmSandbox, spec: dict[str, object]) -> CompiledModule:
    entry = wasm.cache.entries.get(str(spec["hash"]))
    assert entry is not None
    return entry


async def _linked_then_whole(k: Kernel, wasm: WasmSandbox, pid: int, name: str,
                             source: str) -> tuple[object, object, CompiledModule]:
    """The first call's result (or error) served linked, the next one's served whole, and
    the linked entry."""
    outcomes: list[object] = []
    with compiles_held(wasm):
        spec = await register(k, pid, name, source)
        linked = _entry(wasm, spec)
        assert linked.links is not None
        try:
            outcomes.append(await k.call_tool(pid, name, {}))
        except LibosError as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    await trio.to_thread.run_sync(wasm.cache.flush)
    assert _entry(wasm, spec).links is None  # the whole module serves now
    try:
        outcomes.append(await k.call_tool(pid, name, {}))
    except LibosError as exc:
        outcomes.append(f"{type(exc).__name__}: {exc}")
    return outcomes[0], outcomes[1], linked


async def test_a_linked_forms_data_is_written_by_the_host_not_compiled(
        wk: Kernel, wasm: WasmSandbox) -> None:
    """Overlapping segments land in order (the later wins), as in the whole module; the
    linked form carries them beside a module with no compiled initialisation."""
    # (a named one too: the name section left behind names a segment no longer there)
    source = reader('(data $named (i32.const 1024) "ABCDEFGH") (data (i32.const 1026) "xy")')
    first, then, linked = await _linked_then_whole(wk, wasm, await start(wk), "reader", source)
    assert first == then == b"ABxyEFGH"
    assert linked.data == ((1024, b"ABCDEFGH"), (1026, b"xy"))
    assert b"module_start" not in linked.module.serialize()  # (wasmtime's init function)


@pytest.mark.parametrize("data", [
    '(data (i32.const 131070) "hello")',                 # past the library's 2 pages
    '(data (i32.const -1) "")',                          # empty, at 4 GiB - 1: still out
    '(data (i32.const 1024) "ok") (data (i32.const 0x7fffffff) "x")',  # a later one out
])
async def test_a_segment_out_of_bounds_fails_the_same_linked_and_whole(
        wk: Kernel, wasm: WasmSandbox, data: str) -> None:
    """Attack: a segment outside the memory, written by the host, must not write there (nor
    wrap around), and must fail the call as the engine fails the whole module's
    instantiation: the same typed error, audited, the broker serving on."""
    pid = await start(wk)
    first, then, linked = await _linked_then_whole(wk, wasm, pid, "oob", reader(data))
    assert linked.data  # taken over by the host
    assert first == then == "SandboxCrashed: wasm trap: wasm trap: out of bounds memory access"
    calls = [r for r in records(wk, pid, "tool.call") if r["resource"] == "oob"]
    assert [r["detail"].get("error") for r in calls] == ["SANDBOX_CRASHED"] * 2
    await still_serving(wk, pid)


async def test_a_segment_over_the_librarys_own_data_lands_after_it(
        wk: Kernel, wasm: WasmSandbox) -> None:
    """The library's segments are written first in both forms (its instance first; its
    fields first in the whole module): a tool's segment over the library's "ok" key (at 24)
    replaces it in both, and both results are refused alike."""
    source = reader('(data (i32.const 24) "no")')
    first, then, linked = await _linked_then_whole(wk, wasm, await start(wk), "over", source)
    assert linked.data == ((24, b"no"),)
    assert first == then and str(first).startswith("ProtocolError: wasm tool result must be")


async def test_a_tool_with_a_start_function_keeps_its_data_in_the_module(
        wk: Kernel, wasm: WasmSandbox) -> None:
    """Its start function must see the data: that linked form is compiled as it is."""
    source = reader('(data (i32.const 1024) "ABCDEFGH")', with_start=True)
    first, then, linked = await _linked_then_whole(wk, wasm, await start(wk), "started", source)
    assert first == then == b"ABCDEFG!"
    assert linked.data == ()


def test_only_plain_segments_are_taken_over() -> None:
    def split(text: str) -> object:
        return split_data(bytes(wasmtime.wat2wasm(text)))

    run = '(func (export "run") (result i32) (i32.const 1))'
    plain = split(f'(module (memory 1) (data (i32.const 8) "ab") (data (i32.const -2) "c") {run})')
    assert plain is not None
    code, segments = plain  # type: ignore[misc]
    assert segments == ((8, b"ab"), (0xFFFF_FFFE, b"c"))
    wasmtime.Module(wasmtime.Engine(), code)  # what is left is a module
    assert split_data(code) is None  # no data: nothing to take over
    for kept in [
        '(data $d "ab") (func (memory.init $d (i32.const 0) (i32.const 0) (i32.const 1)))',
        '(global $g i32 (i32.const 5)) (data (global.get $g) "ab")',
        '(data (i32.const 8) "ab") (func $s) (start $s)',
        '(data (i32.const 8) "ab") (data "passive")',
    ]:
        assert split(f"(module (memory 1) {kept} {run})") is None, kept


def test_the_stored_module_keeps_its_data() -> None:
    """Only the linked form is cut: what is stored and hashed is the whole module."""
    sandbox = WasmSandbox()
    source = reader('(data (i32.const 1024) "ABCDEFGH")').encode()
    stored = sandbox._compile("wat", source)
    assert b"ABCDEFGH" in stored
    assert sandbox.cache.entries[hashlib.sha256(stored).hexdigest()].data


def _many(count: int) -> tuple[str, bytes]:
    """`count` one-byte segments over memory[1024:1032], later ones over earlier ones; and
    the 8 bytes they leave there."""
    image = bytearray(8)
    data = []
    for i in range(count):
        letter = chr(ord("A") + i % 26)
        data.append(f'(data (i32.const {1024 + i % 8}) "{letter}")')
        image[i % 8] = ord(letter)
    return " ".join(data), bytes(image)


@pytest.mark.parametrize("with_start", [False, True])
async def test_a_linked_form_with_many_segments_is_not_served(
        wk: Kernel, wasm: WasmSandbox, with_start: bool) -> None:
    """Attack: a WAT tool with many data segments. Its linked form would cost the broker for
    each one: a host write on every call, on the trio thread, outside the inline slice's
    check (taken over), or code in an initialisation function compiled in the broker's own
    process (kept, behind a start function: 23 s for 43,000). So it is served whole from
    its registration (wasmtime puts the segments in its memory's image), with the same
    result; one segment fewer is still linked, its segments taken over."""
    pid = await start(wk)
    for count, served_linked in ((MAX_SEGMENTS, True), (MAX_SEGMENTS + 1, False)):
        data, image = _many(count)
        if with_start:  # (byte 1031 = byte 1024 - 32, in both forms)
            image = image[:7] + bytes([image[0] - 32])
        name = f"many{count}"
        spec = await register(wk, pid, name, reader(data, with_start=with_start))
        entry = _entry(wasm, spec)
        assert (entry.links is not None) is served_linked, count
        assert len(entry.data) == (count if served_linked and not with_start else 0)
        assert await wk.call_tool(pid, name, {}) == image
    await still_serving(wk, pid)
