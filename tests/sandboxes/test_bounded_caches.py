"""Memory a model can grow (invariant 8): every cache of the broker that a process fills by
registering tools is bounded, least recently used first out, and a tool it forgot still runs.

A real kernel over SQLite and real Wasmtime. The tools are a working WASM tool made large by
a custom section (which wasmtime skips, so registering one is quick), each with other bytes
so each has a hash of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import wasmtime

from broker import Conflict, InvalidArgument, Kernel
from broker.kernel.tools import MAX_CACHED_SOURCE_BYTES, MAX_VALIDATOR_CODE_CHARS
from broker.lru import Lru
from broker.schema import validator
from sandboxes import wasm_guest
from sandboxes.wasm import WasmSandbox
from sandboxes.wasm_cache import MAX_CACHED_MODULE_BYTES
from sandboxes.wasm_entry import native_bytes
from tests.sandboxes.test_wasm import ECHO, records, register, start

TOOL_BYTES = 1 << 20  # the largest module the driver takes


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def large_tool(i: int, size: int = TOOL_BYTES) -> bytes:
    """ECHO as a binary module of `size` bytes: a custom section "pad" of bytes `i` sets."""
    module = bytes(wasmtime.wat2wasm(wasm_guest.expand(ECHO)))
    name = b"\x03pad"
    room = size - len(module) - 1 - len(name) - 4  # the id, its name, a 4-byte-or-less LEB
    payload = (i.to_bytes(4, "little") * (room // 4 + 1))[:room]
    body = name + payload
    section = b"\x00" + _leb(len(body)) + body
    return (module + section)[:size] if len(module + section) > size else module + section


def kept_bytes(cache: Lru[str, bytes], hashes: list[str]) -> int:
    return sum(len(cache[h]) for h in hashes if h in cache)


@pytest.fixture
async def wk(tmp_path: Path) -> AsyncIterator[tuple[Kernel, WasmSandbox]]:
    wasm = WasmSandbox(tmp_path / "wasm-cache")
    async with Kernel.open(tmp_path / "libos.db", sandboxes=[wasm]) as k:
        yield k, wasm


async def test_many_large_tools_keep_the_caches_within_their_bounds(
        wk: tuple[Kernel, WasmSandbox]) -> None:
    """Registering more large tools than the bounds hold: the kernel's sources and the
    driver's compiled modules stay within them, and the first tool, forgotten by both, still
    runs (read from the store, loaded from its artefact). The sources' bound is the real one;
    the modules' counts native code, which a custom section adds nothing to (~45 KB each), so
    the real one (64 MiB) would hold every tool here: it is made to hold 32."""
    k, wasm = wk
    pid = await start(k)
    count = MAX_CACHED_SOURCE_BYTES // TOOL_BYTES + 8
    first = await register(k, pid, "sizer", large_tool(-1 & 0xFFFFFFFF), lang="wasm")
    wasm.cache.entries.max_bytes = 32 * wasm.cache.entries[first["hash"]].size
    hashes = []
    for i in range(count):
        spec = await register(k, pid, f"big{i}", large_tool(i), lang="wasm")
        hashes.append(spec["hash"])
        assert k.tools._sources.nbytes <= MAX_CACHED_SOURCE_BYTES
        assert wasm.cache.entries.nbytes <= wasm.cache.entries.max_bytes
    assert kept_bytes(k.tools._sources, hashes) <= MAX_CACHED_SOURCE_BYTES  # what it says
    assert hashes[0] not in k.tools._sources and hashes[0] not in wasm.cache.entries
    assert hashes[-1] in k.tools._sources and hashes[-1] in wasm.cache.entries
    before = wasm.stats["loaded"] + wasm.stats["compiled"]
    assert await k.call_tool(pid, "big0", {"again": [1, 2]}) == {"again": [1, 2]}
    assert wasm.stats["loaded"] + wasm.stats["compiled"] == before + 1  # loaded afresh
    assert hashes[0] in k.tools._sources and hashes[0] in wasm.cache.entries


async def test_the_module_cache_counts_the_native_code_it_holds(
        wk: tuple[Kernel, WasmSandbox]) -> None:
    """The bound of compiled modules means memory: an entry weighs the compiled image its
    module holds (10-13x a WAT tool's module), not the module's bytes; a linked WAT tool
    also the whole module it keeps until its first call."""
    k, wasm = wk
    pid = await start(k)
    module = bytes(wasmtime.wat2wasm(wasm_guest.expand(ECHO)))
    spec = await register(k, pid, "echo_bin", module, lang="wasm")
    entry = wasm.cache.entries[spec["hash"]]
    assert entry.size == native_bytes(entry.module) == len(entry.module.serialize())
    assert entry.size > 5 * len(module) and wasm.cache.entries.nbytes == entry.size
    wordcount = wasm_guest.example("wordcount")
    linked = wasm.cache.entries[(await register(k, pid, "wordcount", wordcount))["hash"]]
    assert linked.links is not None
    assert linked.size == native_bytes(linked.module) + len(wasm.cache._wholes[linked.hash])
    assert wasm.cache.entries.nbytes <= MAX_CACHED_MODULE_BYTES


async def test_a_forgotten_linked_tool_forgets_its_whole_module_and_still_runs(
        wk: tuple[Kernel, WasmSandbox]) -> None:
    """A WAT tool is served linked while its whole module waits for its first call: when
    the linked entry is evicted, the whole module's bytes go with it, and the next call
    compiles the stored module."""
    k, wasm = wk
    pid = await start(k)
    spec = await register(k, pid, "echo", ECHO)
    entry = wasm.cache.entries[spec["hash"]]
    assert entry.links is not None and spec["hash"] in wasm.cache._wholes
    wasm.cache.entries.max_items = 1  # the real cache, made small: the next tool evicts it
    await register(k, pid, "big", large_tool(1), lang="wasm")
    assert spec["hash"] not in wasm.cache.entries and not wasm.cache._wholes
    assert await k.call_tool(pid, "echo", {"x": 1}) == {"x": 1}
    assert wasm.cache.entries[spec["hash"]].links is None  # the whole module, from the store


async def test_refused_registrations_leave_nothing_cached(
        wk: tuple[Kernel, WasmSandbox]) -> None:
    """A module the driver refuses, and one the kernel refuses after the driver accepted it
    (two registrations of one name at once: the second finds the name taken), keep nothing
    in the kernel's source cache or the driver's module cache."""
    k, wasm = wk
    pid = await start(k)
    with pytest.raises(InvalidArgument):
        await register(k, pid, "bad", large_tool(7)[:-5], lang="wasm")  # cut short
    assert len(k.tools._sources) == 0 and len(wasm.cache.entries) == 0
    outcomes: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            outcomes[i] = await register(k, pid, "same", large_tool(i), lang="wasm")
        except Conflict as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as nursery:
        for i in (1, 2):
            nursery.start_soon(one, i)
    won = [o for o in outcomes.values() if isinstance(o, dict)]
    lost = [o for o in outcomes.values() if isinstance(o, Conflict)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert list(k.tools._sources) == [won[0]["hash"]]
    outcome = records(k, pid, "tool.register")[-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["error"] == "CONFLICT"


def large_schema(i: int) -> dict[str, object]:
    """A schema whose compiled code is large (about 190,000 characters), `i` making it
    another."""
    return {"type": "object", "properties": {
        f"p{i}_{k}": {"type": "string", "maxLength": k} for k in range(300)}}


async def test_compiled_schemas_are_bounded_by_their_code_and_a_forgotten_one_still_checks(
        wk: tuple[Kernel, WasmSandbox], monkeypatch: pytest.MonkeyPatch) -> None:
    """Tools' schemas compiled for their calls (the kernel's, by schema object) and the
    schema cache (by canonical JSON) are bounded by their generated code, here made small
    (the real caches, with their real bounds of 32 Mi characters each, in 2 Mi): a call of
    a tool whose schema both forgot checks its arguments as before."""
    k, _ = wk
    assert validator._cache.max_bytes == validator.CACHE_CODE_CHARS
    assert k.tools._validators.max_bytes == MAX_VALIDATOR_CODE_CHARS
    monkeypatch.setattr(validator._cache, "max_bytes", 2 << 20)
    k.tools._validators.max_bytes = 2 << 20
    pid = await start(k)
    for i in range(16):
        await register(k, pid, f"echo{i}", ECHO, schema=large_schema(i))
        assert await k.call_tool(pid, f"echo{i}", {f"p{i}_3": "abc"}) == {f"p{i}_3": "abc"}
        assert validator._cache.nbytes <= 2 << 20 and k.tools._validators.nbytes <= 2 << 20
    assert len(k.tools._validators) < 16 and len(validator._cache) < 16
    with pytest.raises(InvalidArgument, match="p0_3"):
        await k.call_tool(pid, "echo0", {"p0_3": "abcd"})  # longer than its maxLength
    assert await k.call_tool(pid, "echo0", {"p0_3": "abc"}) == {"p0_3": "abc"}
