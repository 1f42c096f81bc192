"""WASM tools through the broker: a real kernel over SQLite, real Wasmtime.

Registration (wat and wasm), calls, syscalls and their audit, typed errors, a fresh instance
per call, the compiled-module cache across a restart, inline and threaded execution (and
the re-run that replays syscalls instead of repeating them), deadlines and cancellation.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import wasmtime

from broker import (
    AgentImage,
    CallLimits,
    CallTool,
    Conflict,
    InvalidArgument,
    Kernel,
    LimitExceeded,
    NotCapable,
    NotFound,
    ScriptedPlanner,
    ToolFailed,
)
from broker.providers.clock import RealClock
from broker.store.audit import OPENS
from sandboxes import wasm_guest
from sandboxes.wasm import WasmSandbox
from tests.conftest import ALL_BUILTINS

CAPS = ["fs:/data/**:read,write", "obj:*:read,write", "clock:*:read,sleep",
        "tool:*:register,call"]
NEEDS = ("fs:/**:read,write", "obj:*:read,write", "clock:*:read,sleep", "proc:*:spawn",
         "tool:*:register,call")
NOTE = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


# -- helpers (also used by test_wasm_attacks.py) -----------------------------------------------

def lib(body: str) -> str:
    """A WAT tool over the guest library (linked with it when registered)."""
    return wasm_guest.tool(body)


def raw(body: str, *, memory: str = '(memory (export "memory") 1)',
        alloc: str | None = None, imports: str = "") -> str:
    """A WAT tool without the guest library: a bump `alloc` from 1024 unless given."""
    if alloc is None:
        alloc = """
  (global $top (mut i32) (i32.const 1024))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (local.get $p))"""
    return f"(module\n{imports}\n{memory}\n{alloc}\n{body}\n)"


SYSCALL = '(import "libos" "syscall" (func $syscall (param i32 i32) (result i64)))'

# A tool that returns its arguments: {ok: true, value: <args>}.
ECHO = lib("""
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $r_begin (local.get $args) (local.get $len))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))""")

# clock.now, returned as it is.
NOW = lib("""
  (data (i32.const 1024) "clock.now")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $sys_begin (i32.const 1024) (i32.const 9))
    (call $mp_map (i32.const 0))
    (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))""")


def syscall_tool(name: str, args_wat: str, then: str = "") -> str:
    """A tool making one syscall `name` with args written by `args_wat`; `then` runs after
    a successful syscall, before the syscall's value is returned."""
    return lib(f"""
  (data (i32.const 1024) "{name}")
  (data (i32.const 1100) "path")
  (data (i32.const 1110) "seconds")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (local $i i64)
    (call $sys_begin (i32.const 1024) (i32.const {len(name)}))
    {args_wat}
    (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
    {then}
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))""")


# Busy work for `then`: about 3 fuel units an iteration.
def spin(iterations: int) -> str:
    return f"""
    (loop $spin
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $spin (i64.lt_u (local.get $i) (i64.const {iterations}))))"""


SLEEP_ARGS = """(call $mp_map (i32.const 1))
    (call $mp_str (i32.const 1110) (i32.const 7))
    (call $mp_int (i64.const 5))"""


def read_args() -> str:
    """Args {path: <the tool's own path argument>}."""
    return """(call $mp_map (i32.const 1))
    (call $mp_str (i32.const 1100) (i32.const 4))
    (call $r_begin (local.get $args) (local.get $len))
    (drop (call $mp_find (i32.const 1100) (i32.const 4)))
    (call $mp_copy)"""


async def start(kernel: Kernel, caps: list[str] | None = None, **image: Any) -> int:
    await kernel.register_image(AgentImage("wasm-agent", tools=ALL_BUILTINS, needs=NEEDS,
                                           types={"note": NOTE}, **image))
    pid = kernel.spawn("wasm-agent", caps=CAPS if caps is None else caps)
    await kernel.call_tool(pid, "make_dir", {"path": "/data"})
    return pid


async def register(kernel: Kernel, pid: int, name: str, source: str | bytes, *,
                   lang: str = "wat", schema: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "lang": lang, "source": source}
    if schema is not None:
        spec["schema"] = schema
    return await kernel.call_tool(pid, "register_tool", spec)


def records(kernel: Kernel, pid: int, syscall: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == syscall]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "wasm-cache"


@pytest.fixture
def wasm(cache_dir: Path) -> WasmSandbox:
    return WasmSandbox(cache_dir)


@pytest.fixture
async def wk(db_path: Path, wasm: WasmSandbox) -> AsyncIterator[Kernel]:
    async with Kernel.open(db_path, sandboxes=[wasm]) as k:
        yield k


# -- registration -------------------------------------------------------------------------------

async def test_register_wat_and_call(wk: Kernel) -> None:
    pid = await start(wk)
    spec = await register(wk, pid, "echo", ECHO)
    assert spec["lang"] == "wat" and len(spec["hash"]) == 64
    assert await wk.call_tool(pid, "echo", {"a": 1, "b": ["x", None, True], "c": -5}) == {
        "a": 1, "b": ["x", None, True], "c": -5}
    listed = {t["name"]: t for t in wk.list_tools(pid)}
    assert listed["echo"]["lang"] == "wat"
    register_records = records(wk, pid, "tool.register")
    assert [r["phase"] for r in register_records] == ["intent", "outcome"]
    assert register_records[1]["detail"]["ok"] is True


async def test_register_binary_wasm(wk: Kernel) -> None:
    pid = await start(wk)
    binary = bytes(wasmtime.wat2wasm(wasm_guest.expand(ECHO)))
    spec = await register(wk, pid, "echo_bin", binary, lang="wasm")
    assert spec["lang"] == "wasm"
    assert await wk.call_tool(pid, "echo_bin", {"x": "y"}) == {"x": "y"}


MARKED_ECHO = """(module (;libos:prelude;)
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $r_begin (local.get $args) (local.get $len))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end)))"""


async def test_prelude_marker_is_expanded_at_registration(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "echo_marker", MARKED_ECHO)
    assert await wk.call_tool(pid, "echo_marker", {"k": 1}) == {"k": 1}


async def test_schema_is_checked_before_the_sandbox(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "echo", ECHO, schema={
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    with pytest.raises(InvalidArgument):
        await wk.call_tool(pid, "echo", {"n": "not a number"})
    assert await wk.call_tool(pid, "echo", {"n": 3}) == {"n": 3}


@pytest.mark.parametrize(("source", "lang", "fragment"), [
    ("(module (func", "wat", "does not assemble"),
    (b"\x00asm\x0d\x00\x01\x00junk", "wasm", "not a WebAssembly core module"),
    (b"not wasm at all", "wasm", "not a WebAssembly core module"),
    (b"\x00asm\x01\x00\x00\x00\xff\xff", "wasm", "invalid module"),
    (raw('(func (export "nope") (param i32 i32) (result i64) i64.const 0)'), "wat",
     "must export run"),
    (raw('(func (export "run") (param i32) (result i64) i64.const 0)'), "wat",
     "must export run"),
    (raw('(func (export "run") (param i32 i32) (result i64) i64.const 0)',
         memory="(memory 1)"), "wat", "export its linear memory"),
    (raw('(func (export "run") (param i32 i32) (result i64) i64.const 0)', alloc=""), "wat",
     "must export alloc"),
])
async def test_invalid_modules_are_refused(wk: Kernel, source: str | bytes, lang: str,
                                           fragment: str) -> None:
    pid = await start(wk)
    with pytest.raises(InvalidArgument, match=fragment):
        await register(wk, pid, "bad", source, lang=lang)
    assert "bad" not in {t["name"] for t in wk.list_tools(pid)}
    outcome = records(wk, pid, "tool.register")[-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["error"] == "INVALID_ARGUMENT"


async def test_oversized_module_is_refused(db_path: Path, cache_dir: Path) -> None:
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(cache_dir,
                                                           max_module_bytes=4096)]) as k:
        pid = await start(k)
        with pytest.raises(InvalidArgument, match="over 4096 bytes"):
            await register(k, pid, "big", wasm_guest.expand(ECHO))


# -- the example tools --------------------------------------------------------------------------

async def test_wordcount_reads_a_file_through_fs_read(wk: Kernel) -> None:
    pid = await start(wk)
    text = "the quick  brown\tfox\njumps over\n\n lazy dogs"
    await wk.call_tool(pid, "write_file", {"path": "/data/text.txt", "data": text})
    await register(wk, pid, "wordcount", wasm_guest.example("wordcount"))
    assert await wk.call_tool(pid, "wordcount", {"path": "/data/text.txt"}) == {
        "words": 8, "lines": 3, "bytes": 43}
    reads = records(wk, pid, "fs.read")
    assert [r["phase"] for r in reads] == ["intent+outcome"]
    assert reads[0]["tool"] == "wordcount" and reads[0]["resource"] == "/data/text.txt"
    assert reads[0]["detail"]["ok"] is True
    # through a relative path, as the process names it
    assert (await wk.call_tool(pid, "wordcount", {"path": "data/text.txt"}))["words"] == 8


async def test_wordcount_errors_are_typed_and_audited(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "wordcount", wasm_guest.example("wordcount"))
    with pytest.raises(NotCapable):
        await wk.call_tool(pid, "wordcount", {"path": "/etc/passwd"})
    denied = records(wk, pid, "fs.read")[-1]
    assert denied["phase"] == "denied" and denied["tool"] == "wordcount"
    with pytest.raises(NotFound):
        await wk.call_tool(pid, "wordcount", {"path": "/data/missing.txt"})
    with pytest.raises(InvalidArgument, match="needs"):
        await wk.call_tool(pid, "wordcount", {"file": "/data/x"})


async def test_checksum_of_binary_file(wk: Kernel) -> None:
    pid = await start(wk)
    data = bytes(range(256)) * 40 + b"\x00\xff tail"
    await wk.call_tool(pid, "write_file", {"path": "/data/blob.bin", "data": data})
    await register(wk, pid, "checksum", wasm_guest.example("checksum"))
    assert await wk.call_tool(pid, "checksum", {"path": "/data/blob.bin"}) == {
        "bytes": len(data), "adler32": zlib.adler32(data), "crc32": zlib.crc32(data)}
    await wk.call_tool(pid, "write_file", {"path": "/data/empty", "data": ""})
    assert await wk.call_tool(pid, "checksum", {"path": "/data/empty"}) == {
        "bytes": 0, "adler32": 1, "crc32": 0}
    intent = records(wk, pid, "fs.read")[0]
    assert intent["detail"]["args"] == {"path": "/data/blob.bin", "binary": True}


async def test_upcase_object_gets_and_puts(wk: Kernel) -> None:
    pid = await start(wk)
    await wk.call_tool(pid, "put_object", {"name": "n1", "type": "note",
                                           "value": {"text": "hello, world", "n": 7,
                                                     "tags": ["keep"], "more": "ok"}})
    await register(wk, pid, "upcase", wasm_guest.example("upcase_object"))
    assert await wk.call_tool(pid, "upcase", {"name": "n1"}) == {
        "ns": f"proc/{pid}", "name": "n1", "version": 2}
    got = await wk.call_tool(pid, "get_object", {"name": "n1"})
    assert got["value"] == {"text": "HELLO, WORLD", "n": 7, "tags": ["keep"], "more": "OK"}
    assert got["version"] == 2 and got["type"] == "note"
    puts = records(wk, pid, "obj.put")
    assert puts[-2]["phase"] == "intent" and puts[-2]["tool"] == "upcase"
    assert puts[-2]["detail"]["args"]["expect_version"] == 1
    with pytest.raises(NotFound):
        await wk.call_tool(pid, "upcase", {"name": "absent"})


async def test_upcase_object_refuses_a_value_that_is_not_a_map(wk: Kernel) -> None:
    pid = await start(wk)
    await wk.call_tool(pid, "put_object", {"name": "plain", "type": "json", "value": [1, 2]})
    await register(wk, pid, "upcase", wasm_guest.example("upcase_object"))
    with pytest.raises(InvalidArgument, match="not a map"):
        await wk.call_tool(pid, "upcase", {"name": "plain"})


# -- results and errors ---------------------------------------------------------------------------

ERROR_TOOL = lib("""
  (data (i32.const 1024) "CONFLICT")
  (data (i32.const 1040) "somebody else won")
  (data (i32.const 1064) "NOT_A_CODE")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $r_begin (local.get $args) (local.get $len))
    (if (call $mp_find (i32.const 1024) (i32.const 8))
      (then (return (call $ret_error (i32.const 1024) (i32.const 8)
                                     (i32.const 1040) (i32.const 17)))))
    (call $ret_error (i32.const 1064) (i32.const 10) (i32.const 1040) (i32.const 17)))""")

FAIL_TOOL = lib("""
  (data (i32.const 1024) "NOT_FOUND")
  (data (i32.const 1040) "gone fishing")
  (func $deep (param $n i32)
    (if (local.get $n) (then (call $deep (i32.sub (local.get $n) (i32.const 1))))
      (else (call $fail (i32.const 1024) (i32.const 9) (i32.const 1040) (i32.const 12)))))
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $deep (i32.const 10))
    (i64.const 0))""")

NULL_TOOL = raw('(func (export "run") (param i32 i32) (result i64) (i64.const 0))')


async def test_tool_errors_are_typed(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "err", ERROR_TOOL)
    with pytest.raises(Conflict, match="somebody else won"):
        await wk.call_tool(pid, "err", {"CONFLICT": True})
    with pytest.raises(ToolFailed, match="NOT_A_CODE"):  # a code no error has
        await wk.call_tool(pid, "err", {})
    await register(wk, pid, "fail", FAIL_TOOL)
    with pytest.raises(NotFound, match="gone fishing"):
        await wk.call_tool(pid, "fail", {})
    await register(wk, pid, "null", NULL_TOOL)
    assert await wk.call_tool(pid, "null", {}) is None


async def test_log_lines_become_events(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "logger", lib("""
      (data (i32.const 1024) "hello from wasm")
      (func (export "run") (param $args i32) (param $len i32) (result i64)
        (call $log (i32.const 2) (i32.const 1024) (i32.const 15))
        (i64.const 0))"""))
    assert await wk.call_tool(pid, "logger", {}) is None
    logs = [e for e in wk.store.events(pid=pid) if e["kind"] == "log"]
    assert [(e["data"]["level"], e["data"]["text"], e["data"]["tool"]) for e in logs] == [
        ("warn", "hello from wasm", "logger")]


# -- isolation between calls ---------------------------------------------------------------------

COUNTER = lib("""
  (global $calls (mut i32) (i32.const 0))
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (local $before i32)
    ;; a global and a byte of memory, both incremented: a fresh instance sees 0 and 0
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (local.set $before (i32.load8_u (i32.const 2000)))
    (i32.store8 (i32.const 2000) (i32.add (local.get $before) (i32.const 1)))
    (call $ret_begin)
    (call $mp_array (i32.const 3))
    (call $mp_int (i64.extend_i32_u (global.get $calls)))
    (call $mp_int (i64.extend_i32_u (local.get $before)))
    (call $mp_int (i64.extend_i32_u (global.get $heap)))
    (call $ret_end))""")


@pytest.mark.parametrize("inline", [True, False])
async def test_fresh_instance_per_call(db_path: Path, cache_dir: Path, inline: bool) -> None:
    sandbox = WasmSandbox(cache_dir, inline=inline)
    async with Kernel.open(db_path, sandboxes=[sandbox]) as k:
        pid = await start(k)
        await register(k, pid, "counter", COUNTER)
        results = [await k.call_tool(pid, "counter", {}) for _ in range(3)]
        assert results[0] == results[1] == results[2]
        assert results[0][:2] == [1, 0]
        assert sandbox.stats["inline" if inline else "threaded"] == 3


# Instances and memories come from slots of a pool that calls reuse: what one call left in a
# slot (in its first pages, a grown page, a data segment) must not be seen by the next, of the
# same module or another.
PROBE = lib("""
  (data (i32.const 2000) "A")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (local $size i32) (local $low i32) (local $seg i32) (local $grown i32) (local $far i32)
    (local.set $size (memory.size))
    (local.set $low (i32.load8_u (i32.const 120000)))
    (local.set $seg (i32.load8_u (i32.const 2000)))
    ;; grown pages: one zeroed in place when the slot is given back (the first 256 KiB of
    ;; memory), one given back to the OS
    (if (i32.eq (memory.grow (i32.const 3)) (i32.const -1)) (then (unreachable)))
    (local.set $grown (i32.load8_u (i32.const 131172)))
    (local.set $far (i32.load8_u (i32.const 300000)))
    (i32.store8 (i32.const 120000) (i32.const 0x5a))
    (i32.store8 (i32.const 2000) (i32.const 0x5a))
    (i32.store8 (i32.const 131172) (i32.const 0x5a))
    (i32.store8 (i32.const 300000) (i32.const 0x5a))
    (call $ret_begin)
    (call $mp_array (i32.const 5))
    (call $mp_int (i64.extend_i32_u (local.get $size)))
    (call $mp_int (i64.extend_i32_u (local.get $low)))
    (call $mp_int (i64.extend_i32_u (local.get $seg)))
    (call $mp_int (i64.extend_i32_u (local.get $grown)))
    (call $mp_int (i64.extend_i32_u (local.get $far)))
    (call $ret_end))""")

SCRIBBLE = raw("""
  (func (export "run") (param i32 i32) (result i64)
    (drop (memory.grow (i32.const 5)))
    (memory.fill (i32.const 0) (i32.const 0x77) (i32.const 393216))
    (i64.const 0))""")


@pytest.mark.parametrize("inline", [True, False])
async def test_pooled_slots_come_back_fresh(db_path: Path, cache_dir: Path, inline: bool) -> None:
    sandbox = WasmSandbox(cache_dir, inline=inline, max_threaded_calls=1)
    async with Kernel.open(db_path, sandboxes=[sandbox]) as k:
        pid = await start(k)
        await register(k, pid, "probe", PROBE)
        await register(k, pid, "scribble", SCRIBBLE)
        for _ in range(3):
            assert await k.call_tool(pid, "probe", {}) == [2, 0, ord("A"), 0, 0]
            assert await k.call_tool(pid, "scribble", {}) is None
        assert sandbox.stats["inline" if inline else "threaded"] == 6


class CountingClock(RealClock):
    """A real clock that counts the sleeps under way at once."""

    def __init__(self) -> None:
        self.sleeping = self.most = 0

    async def sleep(self, seconds: float) -> None:
        self.sleeping += 1
        self.most = max(self.most, self.sleeping)
        try:
            await trio.sleep(0.02)
        finally:
            self.sleeping -= 1


async def test_more_concurrent_calls_than_the_pool_wait_for_a_slot(db_path: Path,
                                                                   cache_dir: Path) -> None:
    """The engine's pool holds one instance per worker thread (and one inline call): calls
    beyond that wait for a thread, none fails for want of an instance."""
    sandbox, clock = WasmSandbox(cache_dir, max_threaded_calls=2), CountingClock()
    async with Kernel.open(db_path, sandboxes=[sandbox], clock=clock) as k:
        pid = await start(k)
        await register(k, pid, "nap", syscall_tool("clock.sleep", SLEEP_ARGS))
        results: list[Any] = []

        async def nap() -> None:
            results.append(await k.call_tool(pid, "nap", {}))

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(nap)
        assert results == [None] * 6
        assert sandbox.stats["threaded"] == 6
        assert clock.most == 2  # two at a time: the others waited for a thread


# -- the module cache ------------------------------------------------------------------------------

async def test_compiled_module_cache_survives_a_restart(db_path: Path, cache_dir: Path) -> None:
    first = WasmSandbox(cache_dir)
    async with Kernel.open(db_path, sandboxes=[first]) as k:
        pid = await start(k)
        spec = await register(k, pid, "echo", ECHO)
        assert await k.call_tool(pid, "echo", {"n": 1}) == {"n": 1}
    assert first.stats["compiled"] == 1 and first.stats["loaded"] == 0
    # the tool's artefact, and the guest library's it is linked with
    artefacts = {a.stem: a for a in cache_dir.rglob("*.cwasm")}
    assert set(artefacts) == {spec["hash"], first.cache.library().entry.hash}
    assert all(a.stat().st_mode & 0o777 == 0o600 for a in artefacts.values())

    second = WasmSandbox(cache_dir)
    async with Kernel.open(db_path, sandboxes=[second]) as k:
        assert await k.call_tool(pid, "echo", {"n": 2}) == {"n": 2}
        assert await k.call_tool(pid, "echo", {"n": 3}) == {"n": 3}
    assert second.stats["compiled"] == 0 and second.stats["loaded"] == 1

    # A damaged artefact is discarded and the module compiled again from the stored source.
    artefacts[spec["hash"]].write_bytes(b"garbage")
    third = WasmSandbox(cache_dir)
    async with Kernel.open(db_path, sandboxes=[third]) as k:
        assert await k.call_tool(pid, "echo", {"n": 4}) == {"n": 4}
    assert third.stats["compiled"] == 1 and third.stats["loaded"] == 0


@pytest.mark.parametrize("plant", ["modules-others-may-write", "cache-others-may-write"])
async def test_a_module_cache_others_may_write_is_never_loaded(
        db_path: Path, cache_dir: Path, plant: str) -> None:
    """An artefact is native code that wasmtime runs as it finds it: one put in a cache
    others may write (here another module's, under echo's name) would run in the broker.
    Such a cache is not used: modules are compiled from their stored source."""
    first = WasmSandbox(cache_dir)
    async with Kernel.open(db_path, sandboxes=[first]) as k:
        pid = await start(k)
        echo = await register(k, pid, "echo", ECHO)
        null = await register(k, pid, "null", NULL_TOOL)
        assert await k.call_tool(pid, "echo", {"n": 1}) == {"n": 1}
        assert await k.call_tool(pid, "null", {}) is None
    [modules] = cache_dir.iterdir()
    (modules / f"{echo['hash']}.cwasm").write_bytes(
        (modules / f"{null['hash']}.cwasm").read_bytes())
    (modules if plant.startswith("modules") else cache_dir).chmod(0o777)
    second = WasmSandbox(cache_dir)
    async with Kernel.open(db_path, sandboxes=[second]) as k:
        assert await k.call_tool(pid, "echo", {"n": 2}) == {"n": 2}
    assert second.stats["loaded"] == 0 and second.stats["compiled"] == 1


async def test_same_module_registered_twice_compiles_once(wk: Kernel, wasm: WasmSandbox) -> None:
    pid = await start(wk)
    await register(wk, pid, "a", ECHO)
    await register(wk, pid, "b", ECHO)
    await trio.to_thread.run_sync(wasm.cache.flush)  # the whole module, in the background
    assert wasm.stats["linked"] == 1 and wasm.stats["compiled"] == 1


# -- inline, threaded, and the re-run --------------------------------------------------------------

async def test_inline_attempt_rerun_replays_syscalls_once(wk: Kernel, wasm: WasmSandbox) -> None:
    """A call that reads a file and then computes past the inline slice is re-run in a
    thread; the re-run gets the recorded response and the file is read (and audited) once."""
    pid = await start(wk)
    await wk.call_tool(pid, "write_file", {"path": "/data/f.txt", "data": "payload"})
    await register(wk, pid, "slow_read", syscall_tool("fs.read", read_args(), spin(2_000_000)),
                   schema={"type": "object"})
    assert await wk.call_tool(pid, "slow_read", {"path": "/data/f.txt"}) == "payload"
    assert wasm.stats["restarted"] == 1 and wasm.stats["threaded"] == 1
    reads = records(wk, pid, "fs.read")
    assert [r["phase"] for r in reads] == ["intent+outcome"]
    # The next call goes straight to a thread; the one after tries inline again (and is
    # abandoned again, so then two calls skip it).
    assert await wk.call_tool(pid, "slow_read", {"path": "/data/f.txt"}) == "payload"
    assert wasm.stats["restarted"] == 1 and wasm.stats["threaded"] == 2
    assert await wk.call_tool(pid, "slow_read", {"path": "/data/f.txt"}) == "payload"
    assert wasm.stats["restarted"] == 2 and wasm.stats["threaded"] == 3
    for _ in range(2):
        assert await wk.call_tool(pid, "slow_read", {"path": "/data/f.txt"}) == "payload"
    assert wasm.stats["restarted"] == 2 and wasm.stats["threaded"] == 5
    assert len(records(wk, pid, "fs.read")) == 5  # one whole record per read, none twice


async def test_writes_before_a_rerun_happen_once(wk: Kernel, wasm: WasmSandbox) -> None:
    pid = await start(wk)
    await register(wk, pid, "slow_write", lib("""
      (data (i32.const 1024) "fs.write")
      (data (i32.const 1040) "path")
      (data (i32.const 1048) "/data/log.txt")
      (data (i32.const 1064) "data")
      (data (i32.const 1072) "line\\n")
      (data (i32.const 1080) "append")
      (func (export "run") (param $args i32) (param $len i32) (result i64)
        (local $i i64)
        (call $sys_begin (i32.const 1024) (i32.const 8))
        (call $mp_map (i32.const 3))
        (call $mp_str (i32.const 1040) (i32.const 4))
        (call $mp_str (i32.const 1048) (i32.const 13))
        (call $mp_str (i32.const 1064) (i32.const 4))
        (call $mp_str (i32.const 1072) (i32.const 5))
        (call $mp_str (i32.const 1080) (i32.const 6))
        (call $mp_bool (i32.const 1))
        (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
        (loop $spin
          (local.set $i (i64.add (local.get $i) (i64.const 1)))
          (br_if $spin (i64.lt_u (local.get $i) (i64.const 2000000))))
        (call $ret_begin)
        (call $mp_copy)
        (call $ret_end))"""))
    assert await wk.call_tool(pid, "slow_write", {}) == 5
    assert wasm.stats["restarted"] == 1
    assert await wk.call_tool(pid, "read_file", {"path": "/data/log.txt"}) == "line\n"
    assert [r["phase"] for r in records(wk, pid, "fs.write")] == ["intent", "outcome"]


async def test_blocking_syscall_runs_in_a_thread(wk: Kernel, wasm: WasmSandbox) -> None:
    pid = await start(wk)
    await register(wk, pid, "nap", syscall_tool("clock.sleep", """(call $mp_map (i32.const 1))
    (call $mp_str (i32.const 1110) (i32.const 7))
    (call $mp_int (i64.const 0))"""))
    await wk.call_tool(pid, "nap", {})
    assert wasm.stats["threaded"] == 1
    assert [r["phase"] for r in records(wk, pid, "clock.sleep")] == ["intent", "outcome"]


async def test_threaded_only_sandbox(db_path: Path, cache_dir: Path) -> None:
    sandbox = WasmSandbox(cache_dir, inline=False)
    async with Kernel.open(db_path, sandboxes=[sandbox]) as k:
        pid = await start(k)
        await k.call_tool(pid, "write_file", {"path": "/data/t", "data": "a b c"})
        await register(k, pid, "wordcount", wasm_guest.example("wordcount"))
        assert (await k.call_tool(pid, "wordcount", {"path": "/data/t"}))["words"] == 3
        await register(k, pid, "wasm_now", NOW)
        assert isinstance(await k.call_tool(pid, "wasm_now", {}), float)
        assert sandbox.stats["inline"] == 0 and sandbox.stats["threaded"] == 2


async def test_wasm_tool_calls_another_tool(wk: Kernel) -> None:
    """tool.call from wasm (a blocking syscall) reaching another wasm tool."""
    pid = await start(wk)
    await register(wk, pid, "echo", ECHO)
    await register(wk, pid, "caller", syscall_tool("tool.call", """(call $mp_map (i32.const 2))
    (call $mp_str (i32.const 16) (i32.const 4))
    (call $mp_str (i32.const 1200) (i32.const 4))
    (call $mp_str (i32.const 20) (i32.const 4))
    (call $mp_map (i32.const 1))
    (call $mp_str (i32.const 1200) (i32.const 4))
    (call $mp_int (i64.const 42))""").replace(
        '(data (i32.const 1110) "seconds")',
        '(data (i32.const 1110) "seconds")\n  (data (i32.const 1200) "echo")'))
    assert await wk.call_tool(pid, "caller", {}) == {"echo": 42}
    calls = [r for r in records(wk, pid, "tool.call") if r["phase"] in OPENS]
    assert [(c["tool"], c["resource"]) for c in calls[-2:]] == [
        (None, "caller"), ("caller", "echo")]


# -- time ------------------------------------------------------------------------------------------

async def test_deadline_counts_time_in_host_calls(db_path: Path, cache_dir: Path) -> None:
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(cache_dir)],
                           call_limits=CallLimits(deadline=0.3)) as k:
        pid = await start(k)
        await register(k, pid, "sleepy", syscall_tool("clock.sleep", SLEEP_ARGS))
        began = time.monotonic()
        with pytest.raises(LimitExceeded, match="deadline"):
            await k.call_tool(pid, "sleepy", {})
        assert time.monotonic() - began < 2.0
        # the broker carries on
        await register(k, pid, "echo", ECHO)
        assert await k.call_tool(pid, "echo", {"ok": 1}) == {"ok": 1}


SPIN_FOREVER = raw('(func (export "run") (param i32 i32) (result i64) (loop $l (br $l)) '
                   '(i64.const 0))')


async def test_cancelling_a_call_stops_the_wasm(wk: Kernel, wasm: WasmSandbox) -> None:
    pid = await start(wk)
    await register(wk, pid, "spin", SPIN_FOREVER)
    began = time.monotonic()
    with trio.move_on_after(0.3) as scope:
        await wk.call_tool(pid, "spin", {})
    elapsed = time.monotonic() - began
    assert scope.cancelled_caught
    # The call returned only once its thread had stopped (abandon_on_cancel=False), well
    # before the 30 s deadline and the 2e9 fuel ran out.
    assert elapsed < 1.5
    assert wasm.stats["threaded"] == 1
    await register(wk, pid, "echo", ECHO)
    assert await wk.call_tool(pid, "echo", {"after": True}) == {"after": True}


async def test_killing_the_process_stops_its_wasm_call(wk: Kernel) -> None:
    await wk.register_image(AgentImage("spinner", tools=(
        {"name": "spin", "lang": "wat", "source": SPIN_FOREVER},)))
    worker = wk.spawn("spinner", planner=ScriptedPlanner([CallTool("spin", {})]))
    await trio.sleep(0.3)
    assert wk.process(worker).state.value in ("running", "waiting")
    began = time.monotonic()
    wk.kill(worker, "test")
    status = await wk.wait(worker, timeout=5)
    assert status["state"] == "killed"
    assert time.monotonic() - began < 2.0


async def test_cancelling_a_call_blocked_in_a_syscall(wk: Kernel) -> None:
    pid = await start(wk)
    await register(wk, pid, "sleepy", syscall_tool("clock.sleep", SLEEP_ARGS))
    began = time.monotonic()
    with trio.move_on_after(0.3) as scope:
        await wk.call_tool(pid, "sleepy", {})
    assert scope.cancelled_caught and time.monotonic() - began < 1.5
    outcome = records(wk, pid, "clock.sleep")[-1]
    assert outcome["phase"] == "outcome" and outcome["detail"]["ok"] is False


# -- what an inline attempt may hold -----------------------------------------------------------

BIG_ALLOC = lib("""
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (local $p i32)
    ;; 32 MiB at once: more than an inline attempt's 16 MiB, within the call's 256 MiB
    (local.set $p (call $alloc (i32.const 33554432)))
    (if (i32.eqz (local.get $p)) (then (call $oom)))
    (i32.store8 (i32.add (local.get $p) (i32.const 33554431)) (i32.const 1))
    (call $ret_begin)
    (call $mp_int (i64.extend_i32_u (memory.size)))
    (call $ret_end))""")


async def test_inline_memory_cap_does_not_change_results(wk: Kernel, wasm: WasmSandbox) -> None:
    pid = await start(wk)
    await register(wk, pid, "big", BIG_ALLOC)
    assert await wk.call_tool(pid, "big", {}) >= 512 + 2
    assert wasm.stats["restarted"] == 1 and wasm.stats["threaded"] == 1


TOUCH_ALL = raw("""
  (func (export "run") (param i32 i32) (result i64)
    (drop (memory.grow (i32.const 3200)))
    (memory.fill (i32.const 0) (i32.const 7) (i32.const 209715200))
    (memory.fill (i32.const 0) (i32.const 9) (i32.const 209715200))
    (i64.const 0))""")


async def test_touching_much_memory_does_not_hold_the_loop(wk: Kernel, wasm: WasmSandbox) -> None:
    """Bulk memory instructions cost one unit of fuel whatever their length: an inline
    attempt could hold the trio loop while it fills hundreds of MiB. Its memory cap bounds
    that; the call itself runs in a thread with its full memory."""
    pid = await start(wk)
    await register(wk, pid, "toucher", TOUCH_ALL)
    gaps: list[float] = []
    done = trio.Event()

    async def watch_loop() -> None:
        last = time.monotonic()
        while not done.is_set():
            await trio.sleep(0.001)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_loop)
        await trio.sleep(0.01)
        began = time.monotonic()
        # the result is a zero-length region: null
        assert await wk.call_tool(pid, "toucher", {}) is None
        took = time.monotonic() - began
        done.set()
    assert wasm.stats["restarted"] == 1 and wasm.stats["threaded"] == 1
    assert max(gaps) < took / 2, (max(gaps), took)


def test_a_tool_gets_only_the_library_functions_it_reaches() -> None:
    # Compiling the whole library into every tool was most of a WAT registration.
    body = ('(func (export "run") (param $a i32) (param $n i32) (result i64)\n'
            '  (call $ret_begin) (call $mp_nil) (call $ret_end))')
    spliced = wasm_guest.expand(f"(module (;libos:prelude;)\n{body})")
    assert wasm_guest.module(body).count("(func $") == spliced.count("(func $")
    defined = set(re.findall(r"\(func (\$\S+)", spliced))
    assert {"$ret_begin", "$ret_end", "$mp_nil", "$w_u8", "$alloc", "$ensure"} <= defined
    assert not {"$mp_skip", "$mp_find", "$sys_call", "$mp_read_map"} & defined
    everything = set(re.findall(r"\(func (\$\S+)", wasm_guest.prelude()))
    assert len(defined) < len(everything) / 2
    wasmtime.Module(wasmtime.Engine(), wasmtime.wat2wasm(spliced))  # whole: it compiles
    # A tool naming a function by index counts on the whole library's layout.
    by_index = wasm_guest.expand("(module (;libos:prelude;) (func (call 3)))")
    assert set(re.findall(r"\(func (\$\S+)", by_index)) == everything


def test_the_library_part_a_tool_gets_is_its_own_however_often_asked() -> None:
    """`prelude_for` keeps the part of the library reached from each set of names: a tool
    naming more than the one before gets more, one naming less gets less again."""
    def reached(names: str) -> set[str]:
        body = f'(func (export "run") (param i32 i32) (result i64) {names} (i64.const 0))'
        return set(re.findall(r"\(func (\$\S+)", wasm_guest.expand(
            f"(module (;libos:prelude;)\n{body})")))
    few = reached("(call $ret_begin)")
    more = reached("(call $ret_begin) (drop (call $sys_call))")
    assert "$sys_call" in more and "$sys_call" not in few and few < more
    assert reached("(call $ret_begin)") == few


@pytest.mark.parametrize("by_index", [
    "(func (call (;a comment;) 3))",
    "(func call ;; a line comment\n 3)",
    "(func (return_call(;;)3))",
    "(func (result funcref) ref.func (; (; nested ;) ;) 3)",
    "(table 1 funcref) (elem (;;) (i32.const 0) func 3)",
])
def test_a_function_named_by_index_behind_a_comment_gets_the_whole_library(
        by_index: str) -> None:
    """WAT allows a comment anywhere whitespace goes: `call (;x;) 3` names the library's
    function 3 as surely as `call 3`, and with only part of the library spliced in, index 3
    would be another function (the tool would silently call what it never named)."""
    everything = set(re.findall(r"\(func (\$\S+)", wasm_guest.prelude()))
    spliced = wasm_guest.expand(f"(module (;libos:prelude;) {by_index})")
    assert set(re.findall(r"\(func (\$\S+)", spliced)) == everything
    wasmtime.wat2wasm(spliced)  # it assembles
    # the neighbour: an index in a comment alone names nothing (nor a comment in a string)
    named = wasm_guest.expand('(module (;libos:prelude;) (data (i32.const 0) "(;") '
                              '(func (call $ret_begin)) ;; call 3\n (; ref.func 3 ;))')
    assert len(re.findall(r"\(func (\$\S+)", named)) < len(everything)


async def test_a_wat_tool_is_linked_with_the_library_until_its_whole_module_is_compiled(
        wk: Kernel, wasm: WasmSandbox) -> None:
    """The guest library is compiled once per engine, as a module of its own. At
    registration a WAT tool with the marker compiles only its own functions, importing what
    it names from the library, which each call instantiates afresh in the tool's store; the
    whole module (what is stored, and cached) compiles in the background and then serves."""
    gate = threading.Event()
    wasm.cache._writer.submit(gate.wait, 10)  # hold the background compile back
    pid = await start(wk)
    specs = [await register(wk, pid, "counter", COUNTER), await register(wk, pid, "wasm_now", NOW)]
    assert wasm.stats["linked"] == 2 and wasm.stats["library"] == 1
    assert wasm.stats["compiled"] == 0
    linked = [wasm.cache.entries[spec["hash"]] for spec in specs]
    for entry in linked:
        assert entry.links is not None
        # its own `run`; everything from the library (memory, globals, functions; its
        # `alloc`, which the host calls, neither imported nor exported unless named)
        assert {i.module for i in entry.module.imports} == {wasm_guest.library_module_name()}
        assert {"memory", "ret_begin", "ret_end"} <= {i.name for i in entry.module.imports}
        assert "alloc" not in {e.name for e in entry.module.exports}
        assert len(entry.module.imports) < 12
    # isolation as with a whole module: the library's globals (here $heap) start afresh
    first = await wk.call_tool(pid, "counter", {})
    assert first[:2] == [1, 0] and await wk.call_tool(pid, "counter", {}) == first
    assert isinstance(await wk.call_tool(pid, "wasm_now", {}), float)

    gate.set()
    await trio.to_thread.run_sync(wasm.cache.flush)
    assert wasm.stats["compiled"] == 2
    for spec in specs:
        whole = wasm.cache.entries[spec["hash"]]
        assert whole.links is None and {i.module for i in whole.module.imports} <= {"libos"}
    assert await wk.call_tool(pid, "counter", {}) == first  # the same tool, whole
    assert isinstance(await wk.call_tool(pid, "wasm_now", {}), float)


async def test_a_tools_first_call_runs_the_source_just_stored_without_reading_it_back(
        wk: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel keeps what it stored at registration (by its content hash: the bytes it
    just hashed), so a first call does not read the store for it."""
    pid = await start(wk)
    await register(wk, pid, "echo", ECHO)

    def no_read(hash_: str) -> Any:
        raise AssertionError("the first call read the tool's source back from the store")

    monkeypatch.setattr(wk.store, "get_tool_source", no_read)
    assert await wk.call_tool(pid, "echo", {"n": 3}) == {"n": 3}


async def test_a_wat_tools_whole_module_compiles_after_its_first_call_not_before(
        wk: Kernel, wasm: WasmSandbox) -> None:
    """The whole module's compile (several times the linked form's) does not compete with
    the registration and the first call: it starts once that call has ended."""

    async def writer_idle() -> None:  # one writer thread, in order: all before is done
        await trio.to_thread.run_sync(wasm.cache._writer.submit(lambda: None).result)

    pid = await start(wk)
    spec = await register(wk, pid, "echo", ECHO)
    await writer_idle()
    assert wasm.stats["compiled"] == 0 and wasm.cache.entries[spec["hash"]].links is not None
    assert await wk.call_tool(pid, "echo", {"n": 1}) == {"n": 1}
    await writer_idle()
    assert wasm.stats["compiled"] == 1 and wasm.cache.entries[spec["hash"]].links is None
    assert await wk.call_tool(pid, "echo", {"n": 2}) == {"n": 2}  # the whole module serves


# A start function making a syscall straight through `libos.syscall` (so the host's caller is
# the tool's instance, not the library's), before `run` is ever called.
SYSCALL_AT_START = lib("""
  (data (i32.const 1024) "clock.now")
  (global $answer (mut i64) (i64.const 0))
  (func $init
    (local $req i64)
    (call $sys_begin (i32.const 1024) (i32.const 9))
    (call $mp_map (i32.const 0))
    (local.set $req (call $w_end))
    (global.set $answer (call $libos_syscall (call $ptr_of (local.get $req))
                                             (call $len_of (local.get $req)))))
  (start $init)
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $ret_begin)
    (call $mp_int (i64.extend_i32_u (call $len_of (global.get $answer))))
    (call $ret_end))""")


async def test_a_linked_tools_start_function_gets_the_librarys_alloc(
        wk: Kernel, wasm: WasmSandbox) -> None:
    """A linked tool neither imports nor exports `alloc` (the host calls the library's), so
    a syscall from its start function, whose response the host writes through `alloc`, must
    find the library's: the same answer linked as whole."""
    gate = threading.Event()
    wasm.cache._writer.submit(gate.wait, 10)  # hold the background compile back
    pid = await start(wk)
    spec = await register(wk, pid, "early", SYSCALL_AT_START)
    assert wasm.cache.entries[spec["hash"]].links is not None
    linked = await wk.call_tool(pid, "early", {})
    gate.set()
    await trio.to_thread.run_sync(wasm.cache.flush)
    assert wasm.cache.entries[spec["hash"]].links is None
    assert await wk.call_tool(pid, "early", {}) == linked and linked > 8  # {ok, value} read
    assert [r["detail"].get("ok") for r in records(wk, pid, "clock.now")] == [True, True]


def _binary_over_the_library(wasm: WasmSandbox, alloc: str) -> bytes:
    """A binary tool importing from the guest library module, exporting `alloc` as given:
    `run` returns where its arguments were put."""
    imports = wasm.cache.library().imports
    fields = "\n".join(imports[n] for n in ("memory", "$ret_begin", "$mp_int", "$ret_end"))
    return bytes(wasmtime.wat2wasm(f"""(module {fields}
  (export "memory" (memory 0))
  {alloc}
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $ret_begin) (call $mp_int (i64.extend_i32_u (local.get $args))) (call $ret_end)))"""))


async def test_a_binary_over_the_library_keeps_its_own_alloc(
        wk: Kernel, wasm: WasmSandbox) -> None:
    """Only a linked WAT tool goes without `alloc`: a binary module importing from the
    library that exports its own gets its arguments where that one says, and one whose
    `alloc` has another type is refused."""
    pid = await start(wk)
    own = '(func (export "alloc") (param i32) (result i32) (i32.const 60000))'
    await register(wk, pid, "own", _binary_over_the_library(wasm, own), lang="wasm")
    assert await wk.call_tool(pid, "own", {}) == 60000
    bad = '(func (export "alloc") (param i64) (result i32) (i32.const 60000))'
    with pytest.raises(InvalidArgument, match="must export alloc"):
        await register(wk, pid, "bad", _binary_over_the_library(wasm, bad), lang="wasm")
    await register(wk, pid, "none", _binary_over_the_library(wasm, ""), lang="wasm")
    assert await wk.call_tool(pid, "none", {}) != 60000  # the library's alloc


@pytest.mark.parametrize("linked_form", [
    "(module (func (call $nowhere)))",                    # does not assemble
    '(module (import "env" "x" (func)) (func (export "run")))',  # refused by the ABI check
])
async def test_a_linked_form_that_fails_leaves_the_whole_module_compiled_at_once(
        wk: Kernel, wasm: WasmSandbox, monkeypatch: pytest.MonkeyPatch,
        linked_form: str) -> None:
    """Linking only speeds registration up: a tool whose linked form fails to assemble or
    is refused is compiled whole at registration, as a tool was before."""
    monkeypatch.setattr(wasm_guest, "link", lambda text, imports: linked_form)
    pid = await start(wk)
    spec = await register(wk, pid, "echo", ECHO)
    assert wasm.stats["linked"] == 0 and wasm.stats["compiled"] == 1
    assert wasm.cache.entries[spec["hash"]].links is None
    assert await wk.call_tool(pid, "echo", {"k": 2}) == {"k": 2}


def test_a_tool_naming_a_function_by_index_is_not_linked() -> None:
    imports = {"memory": "", **{n: "" for n in wasm_guest.library_names()}}
    assert wasm_guest.link("(module (;libos:prelude;) (func (call 3)))", imports) is None
    assert wasm_guest.link("(module (;libos:prelude;) (func (call +3)))", imports) is None
    # a global or a type by index means another thing once only named globals are imported
    for by_index in ("(func (drop (global.get 0)))",
                     "(func (call_indirect (type 0) (i32.const 0)))",
                     "(func (data.drop 0))", "(func (drop (global.get +0)))"):
        assert wasm_guest.link(wasm_guest.tool(by_index), imports) is None
    assert wasm_guest.link("(module (func))", imports) is None  # no marker
    linked = wasm_guest.link(wasm_guest.tool("(func (call $mp_nil))"), {
        **imports, "memory": "(M)", "$mp_nil": "(NIL)", "$alloc": "(ALLOC)"})
    assert linked is not None and "(M)" in linked and "(NIL)" in linked
    assert "(ALLOC)" not in linked and '"alloc"' not in linked  # the host calls the library's
    named = wasm_guest.link(wasm_guest.tool("(func (drop (call $alloc (i32.const 8))))"), {
        **imports, "memory": "(M)", "$alloc": "(ALLOC)"})
    assert named is not None and "(ALLOC)" in named and '"alloc"' not in named


def test_prelude_marker_counts_only_after_module() -> None:
    assert wasm_guest.expand("(module)") == "(module)"
    expanded = wasm_guest.expand('(module $t (;libos:prelude;) (func))')
    assert expanded.startswith("(module $t \n") and '"alloc"' in expanded
    # elsewhere it stays a comment
    text = '(module (func) (;libos:prelude;))'
    assert wasm_guest.expand(text) == text
    assert wasm_guest.MARKER not in wasm_guest.prelude()
