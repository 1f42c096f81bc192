"""One contract for every sandbox: the same tool behaviour, written in TypeScript (Deno),
WebAssembly text (Wasmtime) and Python (Pyodide), through the same kernel.

Each case gives the equivalent tool per language and runs once per language: arguments in
and results out, syscalls and their audit, a tool calling a tool, typed errors from the
kernel into the tool (propagated or caught) and from the tool out, schema validation before
any sandbox runs, limits (deadline, syscall cap, output cap) and cancellation, after which
the same process is served again.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import InvalidArgument, Kernel, LimitExceeded, NotCapable, NotFound, SandboxCrashed
from sandboxes import wasm_guest
from sandboxes.base import SandboxDriver, ToolCode
from sandboxes.deno import DenoSandbox
from sandboxes.pyodide import PyodideSandbox, pyodide_available
from sandboxes.testing import NullHost
from sandboxes.wasm import WasmSandbox
from tests.sandboxes.conftest import CAPS, DEADLINE_SLACK, LIMITS, kernel_over, limits_for

LANGS = [
    pytest.param("ts", id="ts"),
    pytest.param("wat", id="wat"),
    pytest.param("python", id="python", marks=pytest.mark.skipif(
        not pyodide_available(), reason="Pyodide is not installed: run `libos setup`")),
]


@pytest.fixture(params=LANGS)
async def lk(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Kernel, str]]:
    """A kernel with the sandbox of one language, and that language."""
    lang = request.param
    sandbox: Any
    if lang == "ts":
        sandbox = DenoSandbox(spares=1, memory_mb=LIMITS.memory_mb, check_timeout=1.0)
    elif lang == "wat":
        sandbox = WasmSandbox(tmp_path / "wasm-cache")
    else:
        sandbox = PyodideSandbox(spares=1, memory_mb=LIMITS.memory_mb)
    # A test of something else than the deadline gives it room: on a loaded machine a cold
    # sandbox for a nested call can take longer than the 2 s the deadline tests use.
    async with kernel_over(tmp_path, sandbox, limits_for(request)) as kernel:
        (tmp_path / "libos-fs" / "data" / "note.txt").write_text("hello contract")
        yield kernel, lang


def wat(body: str) -> str:
    return wasm_guest.module(body)


# -- the tools, per language -----------------------------------------------------------------

ECHO = {
    "ts": "export default async function run(args: unknown) { return args; }",
    "python": "def run(args, libos):\n    return args\n",
    "wat": wat("""
  (func (export "run") (param $a i32) (param $n i32) (result i64)
    (call $ret_begin)
    (call $r_begin (local.get $a) (local.get $n))
    (call $mp_copy)
    (call $ret_end))"""),
}

# fs.read of args.path; a failure propagates as the tool's own typed error
READ = {
    "ts": "export default async function run(args: {path: string}, libos: any) {\n"
          "  return await libos.fs.read(args.path);\n}",
    "python": "def run(args, libos):\n    return libos.fs.read_text(args['path'])\n",
    "wat": wat("""
  (data (i32.const 1024) "fs.read")
  (data (i32.const 1032) "path")
  (func (export "run") (param $a i32) (param $n i32) (result i64)
    (call $sys_begin (i32.const 1024) (i32.const 7))
    (call $mp_map (i32.const 1))
    (call $mp_str (i32.const 1032) (i32.const 4))
    (call $r_begin (local.get $a) (local.get $n))
    (if (i32.eqz (call $mp_find (i32.const 1032) (i32.const 4))) (then (call $bad)))
    (call $mp_copy)
    (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))"""),
}

# fs.read of args.path; a failure is caught and its code returned
CATCH = {
    "ts": "export default async function run(args: {path: string}, libos: any) {\n"
          "  try { await libos.fs.read(args.path); return 'read'; }\n"
          "  catch (e) { if (e instanceof libos.LibosError) return (e as any).code; throw e; }\n}",
    "python": "def run(args, libos):\n    try:\n        libos.fs.read(args['path'])\n"
              "        return 'read'\n    except libos.LibosError as exc:\n"
              "        return exc.code\n",
    "wat": wat("""
  (data (i32.const 1024) "fs.read")
  (data (i32.const 1032) "path")
  (data (i32.const 1040) "read")
  (func (export "run") (param $a i32) (param $n i32) (result i64)
    (call $sys_begin (i32.const 1024) (i32.const 7))
    (call $mp_map (i32.const 1))
    (call $mp_str (i32.const 1032) (i32.const 4))
    (call $r_begin (local.get $a) (local.get $n))
    (if (i32.eqz (call $mp_find (i32.const 1032) (i32.const 4))) (then (call $bad)))
    (call $mp_copy)
    (if (call $sys_call)
      (then (call $ret_begin)
            (call $mp_str (i32.const 1040) (i32.const 4))
            (return (call $ret_end))))
    (call $r_set (call $sys_response))
    (if (i32.eqz (call $mp_find (i32.const 36) (i32.const 4))) (then (call $bad)))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))"""),
}

# the tool fails with NOT_FOUND "no such widget"
RAISE = {
    "ts": "export default async function run(args: unknown, libos: any) {\n"
          "  throw new libos.NotFound('no such widget');\n}",
    "python": "def run(args, libos):\n    raise libos.NotFound('no such widget')\n",
    "wat": wat("""
  (data (i32.const 1024) "NOT_FOUND")
  (data (i32.const 1040) "no such widget")
  (func (export "run") (param $a i32) (param $n i32) (result i64)
    (call $ret_error (i32.const 1024) (i32.const 9) (i32.const 1040) (i32.const 14)))"""),
}

# tool.call of "echo" with this tool's arguments
CALLS = {
    "ts": "export default async function run(args: unknown, libos: any) {\n"
          "  return await libos.tool.call('echo', args);\n}",
    "python": "def run(args, libos):\n    return libos.tools.call('echo', args)\n",
    "wat": wat("""
  (data (i32.const 1024) "tool.call")
  (data (i32.const 1040) "echo")
  (func (export "run") (param $a i32) (param $n i32) (result i64)
    (call $sys_begin (i32.const 1024) (i32.const 9))
    (call $mp_map (i32.const 2))
    (call $mp_str (i32.const 16) (i32.const 4))
    (call $mp_str (i32.const 1040) (i32.const 4))
    (call $mp_str (i32.const 20) (i32.const 4))
    (call $r_begin (local.get $a) (local.get $n))
    (call $mp_copy)
    (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
    (call $ret_begin)
    (call $mp_copy)
    (call $ret_end))"""),
}

SPIN = {
    "ts": "export default async function run() { while (true) {} }",
    "python": "def run(args, libos):\n    while True:\n        pass\n",
    "wat": wat("""
  (func (export "run") (param $a i32) (param $n i32) (result i64)
    (loop $forever (br $forever))
    (unreachable))"""),
}

SYSCALL_FLOOD = {
    "ts": "export default async function run(args: unknown, libos: any) {\n"
          "  while (true) await libos.clock.now();\n}",
    "python": "def run(args, libos):\n    while True:\n        libos.clock.now()\n",
    "wat": wat("""
  (data (i32.const 1024) "clock.now")
  (func (export "run") (param $a i32) (param $n i32) (result i64)
    (loop $again
      (call $sys_begin (i32.const 1024) (i32.const 9))
      (call $mp_map (i32.const 0))
      (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
      (br $again))
    (unreachable))"""),
}

LOG_FLOOD = {
    "ts": "export default async function run() {\n"
          "  while (true) console.log('x'.repeat(1000));\n}",
    "python": "def run(args, libos):\n    while True:\n        print('x' * 1000)\n",
    "wat": wat(f"""
  (data (i32.const 1024) "{'x' * 1000}")
  (func (export "run") (param $a i32) (param $n i32) (result i64)
    (loop $again
      (call $log (i32.const 1) (i32.const 1024) (i32.const 1000))
      (br $again))
    (unreachable))"""),
}


async def setup_tools(kernel: Kernel, lang: str, caps: list[str] | None = None,
                      **tools: dict[str, str]) -> int:
    pid = kernel.spawn("agent", caps=CAPS if caps is None else caps)
    for name, sources in tools.items():
        await kernel.call_tool(pid, "register_tool", {"name": name, "lang": lang,
                                                      "source": sources[lang]})
    return pid


def audit_of(kernel: Kernel, pid: int, syscall: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == syscall]


# -- the contract ------------------------------------------------------------------------------

VALUES = {"s": "héllo ☃", "i": -(2 ** 40), "f": 2.5, "t": True, "n": None,
          "l": [1, [2, [3]], "x"], "d": {"k": {"j": "v"}}, "empty": {}}


async def test_arguments_in_and_results_out(lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, echo=ECHO)
    assert await kernel.call_tool(pid, "echo", VALUES) == VALUES
    assert await kernel.call_tool(pid, "echo", {}) == {}
    listed = {t["name"]: t for t in kernel.list_tools(pid)}
    assert listed["echo"]["lang"] == lang


async def test_a_syscall_is_checked_audited_and_answered(lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, read=READ)
    assert await kernel.call_tool(pid, "read", {"path": "/data/note.txt"}) == "hello contract"
    records = audit_of(kernel, pid, "fs.read")
    assert [r["phase"] for r in records] == ["intent+outcome"]  # a read: one record of both
    assert records[0]["resource"] == "/data/note.txt" and records[0]["tool"] == "read"
    assert records[0]["detail"]["ok"] is True


async def test_a_denied_syscall_propagates_as_the_same_typed_error(
        lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, read=READ)
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read", {"path": "/etc/passwd"})
    denied = audit_of(kernel, pid, "fs.read")
    assert [r["phase"] for r in denied] == ["denied"]
    assert denied[0]["resource"] == "/etc/passwd"
    with pytest.raises(NotFound):  # the kernel's NotFound, through the tool
        await kernel.call_tool(pid, "read", {"path": "/data/missing.txt"})


async def test_a_typed_error_can_be_caught_by_the_tool(lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, catch=CATCH)
    assert await kernel.call_tool(pid, "catch", {"path": "/etc/passwd"}) == "NOT_CAPABLE"
    assert await kernel.call_tool(pid, "catch", {"path": "/data/none"}) == "NOT_FOUND"
    assert await kernel.call_tool(pid, "catch", {"path": "/data/note.txt"}) == "read"


async def test_a_typed_error_raised_by_the_tool_keeps_its_code(lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, fail=RAISE)
    with pytest.raises(NotFound, match="no such widget"):
        await kernel.call_tool(pid, "fail", {})
    outcome = [r for r in audit_of(kernel, pid, "tool.call")
               if r["phase"] in ("outcome", "intent+outcome")]  # (no effect: one record)
    assert outcome[-1]["detail"]["ok"] is False
    assert outcome[-1]["detail"]["error"] == "NOT_FOUND"


@pytest.mark.slow_ok
async def test_a_tool_calls_a_tool(lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, echo=ECHO, calls=CALLS)
    assert await kernel.call_tool(pid, "calls", {"x": [1, "two"]}) == {"x": [1, "two"]}
    calls = [r for r in audit_of(kernel, pid, "tool.call")
             if r["phase"] in ("intent", "intent+outcome")]  # (echo's: whole, no effect)
    assert [r["resource"] for r in calls][-2:] == ["calls", "echo"]


async def test_arguments_are_validated_by_the_schema_before_any_sandbox(
        lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = kernel.spawn("agent", caps=CAPS)
    await kernel.call_tool(pid, "register_tool", {
        "name": "read", "lang": lang, "source": READ[lang],
        "schema": {"type": "object", "properties": {"path": {"type": "string"}},
                   "required": ["path"], "additionalProperties": False}})
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "read", {"path": 7})
    assert not audit_of(kernel, pid, "fs.read")
    assert await kernel.call_tool(pid, "read", {"path": "/data/note.txt"}) == "hello contract"


async def test_the_deadline_ends_a_runaway_tool(lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, spin=SPIN, echo=ECHO)
    t0 = trio.current_time()
    with pytest.raises(LimitExceeded):
        await kernel.call_tool(pid, "spin", {})
    assert trio.current_time() - t0 < LIMITS.deadline + DEADLINE_SLACK
    assert await kernel.call_tool(pid, "echo", {"after": 1}) == {"after": 1}


@pytest.mark.slow_ok
async def test_the_syscall_cap_ends_a_flood_and_the_refusal_is_audited(
        lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, flood=SYSCALL_FLOOD, echo=ECHO)
    with pytest.raises(LimitExceeded):
        await kernel.call_tool(pid, "flood", {})
    records = audit_of(kernel, pid, "clock.now")
    done = [r for r in records if r["phase"] == "intent+outcome"]
    assert len(done) == LIMITS.max_syscalls
    assert records[-1]["phase"] in ("denied", "rejected")
    assert await kernel.call_tool(pid, "echo", {"after": 1}) == {"after": 1}


@pytest.mark.slow_ok
async def test_the_output_cap_ends_a_log_flood(lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, flood=LOG_FLOOD, echo=ECHO)
    with pytest.raises(LimitExceeded):
        await kernel.call_tool(pid, "flood", {})
    logged = sum(len(e["data"]["text"]) for e in kernel.store.events(pid=pid)
                 if e["kind"] == "log")
    assert 0 < logged <= LIMITS.max_output_bytes
    assert await kernel.call_tool(pid, "echo", {"after": 1}) == {"after": 1}


async def test_cancellation_ends_the_call_and_the_process_is_served_again(
        lk: tuple[Kernel, str]) -> None:
    kernel, lang = lk
    pid = await setup_tools(kernel, lang, spin=SPIN, echo=ECHO)
    assert await kernel.call_tool(pid, "echo", {"before": 1}) == {"before": 1}
    t0 = trio.current_time()
    with trio.move_on_after(0.3) as scope:
        await kernel.call_tool(pid, "spin", {})
    assert scope.cancelled_caught
    assert trio.current_time() - t0 < 1.0
    assert await kernel.call_tool(pid, "echo", {"after": 1}) == {"after": 1}


# -- one lifecycle ---------------------------------------------------------------------------

def driver(lang: str, tmp_path: Path) -> Any:
    if lang == "ts":
        return DenoSandbox(spares=0, memory_mb=LIMITS.memory_mb, check_timeout=1.0)
    if lang == "wat":
        return WasmSandbox(tmp_path / "wasm-cache")
    return PyodideSandbox(spares=0, memory_mb=LIMITS.memory_mb)


@pytest.mark.parametrize("lang", LANGS)
async def test_every_driver_is_opened_and_closed_the_same_way(lang: str, tmp_path: Path) -> None:
    """Entered with `async with` (opened in this task, closed on leaving), or unentered
    (opened on first use) and closed with `aclose`, from another task and twice: either way
    it serves calls while open and refuses them, typed, once closed."""
    async with driver(lang, tmp_path) as sandbox:
        assert isinstance(sandbox, SandboxDriver)
        source = await sandbox.prepare("echo", lang, ECHO[lang].encode())
        code = ToolCode("echo", lang, source, hashlib.sha256(source).hexdigest())
        assert await sandbox.call(code, {"a": 1}, NullHost(), LIMITS) == {"a": 1}
    with pytest.raises(SandboxCrashed, match="closed"):
        await sandbox.call(code, {"a": 2}, NullHost(), LIMITS)

    sandbox = driver(lang, tmp_path)
    assert await sandbox.call(code, {"a": 3}, NullHost(), LIMITS) == {"a": 3}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sandbox.aclose)
    await sandbox.aclose()
    with pytest.raises(SandboxCrashed, match="closed"):
        await sandbox.call(code, {"a": 4}, NullHost(), LIMITS)
