"""Attacks from inside a Python tool. Python reaches Deno's globals through `import js` (and
Pyodide's API through `import pyodide_js` until the host takes it away: it is not there for a
tool); these tests show that this gives no file
(Pyodide's own assets included: the read permission is revoked once Pyodide has loaded),
environment, network, subprocess, FFI or code generation; that no frame counts for another
invocation or process; that no state survives into another process's invocation; and that
loops, memory bombs (Python, bytearray, WebAssembly memory, ArrayBuffers) and floods end in
LimitExceeded within their limits while other processes keep being served. Every refusal by
the broker is a typed error with an audit record.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import InvalidArgument, Kernel, LimitExceeded, NotCapable, ToolFailed
from broker.store.audit import CLOSES, OPENS
from sandboxes.pyodide import PyodideSandbox, pyodide_available, pyodide_dir
from tests.sandboxes.conftest import (
    DEADLINE_SLACK,
    LIMITS,
    agent,
    audit_of,
    killed_since,
    logs,
)
from tests.sandboxes.test_pyodide import ECHO, register, tool

pytestmark = pytest.mark.skipif(not pyodide_available(),
                                reason="Pyodide is not installed: run `libos setup`")
PYODIDE_SPARES = 2

PROBE = """
import js, os, sys

def run(args, libos):
    out = {}
    for name, expr in args.items():
        try:
            out[name] = ["ok", repr(eval(expr))[:200]]
        except BaseException as exc:
            out[name] = [type(exc).__name__, str(exc)[:200]]
    return out
"""

APROBE = """
import js

async def run(args, libos):
    out = {}
    for name, expr in args.items():
        try:
            out[name] = ["ok", repr(await eval(expr))[:200]]
        except BaseException as exc:
            out[name] = [type(exc).__name__, str(exc)[:200]]
    return out
"""


def refused(result: list[str]) -> bool:
    return result[0] == "JsException" and "NotCapable" in result[1]


# -- no ambient authority through js / pyodide_js ----------------------------------------------

async def test_files_outside_and_inside_pyodides_directory_are_unreadable(
        pk: Kernel, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    assets = pyodide_dir()
    pid = agent(pk)
    got = await tool(pk, pid, PROBE, {
        "passwd": "js.Deno.readTextFileSync('/etc/passwd')",
        "secret": f"js.Deno.readTextFileSync({str(secret)!r})",
        "asset": f"js.Deno.readTextFileSync({str(assets / 'package.json')!r})",
        "snapshot": f"js.Deno.readFileSync({str(assets / 'libos-snapshot.bin')!r})",
        "asset_dir": f"list(js.Deno.readDirSync({str(assets)!r}))",
        "stat": f"js.Deno.statSync({str(secret)!r}).size",
        "cwd": "js.Deno.cwd()",  # a host detail: refused (issue 14)
        "import": f"__import__('pyodide_js').loadPackage({str(assets / 'pyodide.mjs')!r})",
        "open": "open('/etc/passwd').read()",
        "open_secret": f"open({str(secret)!r}).read()",
    })
    for name in ("passwd", "secret", "asset", "snapshot", "asset_dir", "stat", "cwd"):
        assert refused(got[name]), (name, got[name])
    assert got["open"][0] == got["open_secret"][0] == "FileNotFoundError"
    assert got["import"][0] == "ModuleNotFoundError"  # Pyodide's API is not there
    assert "s3cret" not in repr(got)


async def test_what_python_can_read_is_its_own_in_memory_stdlib(pk: Kernel) -> None:
    """Python's `open` sees Pyodide's in-memory file system: the standard library (the
    public npm package's python_stdlib.zip, already loaded) and empty /tmp and /home. Nothing
    from the host is mounted, and what a tool writes there stays in its own process."""
    pid = agent(pk)
    got = await tool(pk, pid, PROBE, {
        "root": "sorted(os.listdir('/'))",
        "lib": "sorted(os.listdir('/lib'))",
        "stdlib": "len(open('/lib/python314.zip', 'rb').read()) > 1_000_000",
        "home": "os.listdir('/home/pyodide')",
        "tmp": "os.listdir('/tmp')",
        "env": "sorted(os.environ)",
    })
    assert eval(got["root"][1]) == ["dev", "home", "lib", "proc", "tmp"]
    assert eval(got["lib"][1]) == ["python3.14", "python314.zip"]
    assert got["stdlib"] == ["ok", "True"]
    assert got["home"] == got["tmp"] == ["ok", "[]"]
    env = eval(got["env"][1])
    assert not set(env) & set(os.environ) - {"HOME", "PATH", "USER", "LOGNAME", "PWD",
                                              "LANG", "LD_LIBRARY_PATH"}
    assert "/work" not in got["env"][1]


async def test_environment_processes_ffi_and_code_generation_are_refused(
        pk: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = agent(pk)
    got = await tool(pk, pid, PROBE, {
        "env": "js.Deno.env.get('HOME')",
        "env_all": "js.Deno.env.toObject()",
        "command": "js.Deno.Command.new('/bin/sh').outputSync()",
        "dlopen": "js.Deno.dlopen('libc.so.6', js.Object.new())",
        "write": "js.Deno.writeTextFileSync('/tmp/pwned', 'x')",
        "eval": "js.eval('1 + 1')",
        "function": "js.Function.new('return 1')()",
        "worker": "js.Worker.new('data:,')",
        "exit": "js.Deno.exit(3)",
        "subprocess": "__import__('subprocess').run(['/bin/sh'])",
        "system": "os.system('id')",
        "popen": "os.popen('id').read()",
        "fork": "os.fork()",
        "ask_read": "js.Deno.permissions.requestSync(js.JSON.parse('{\"name\": \"read\"}'))"
                    ".state",
        "ask_run": "js.Deno.permissions.requestSync(js.JSON.parse('{\"name\": \"run\"}')).state",
    })
    for name in ("env", "env_all", "command", "dlopen", "write", "worker", "exit"):
        assert refused(got[name]) or "NotCapable" in got[name][1], (name, got[name])
    assert "disallowed" in got["eval"][1] and "disallowed" in got["function"][1]
    for name in ("subprocess", "system", "popen", "fork"):
        assert got[name][0] == "OSError", (name, got[name])
    assert got["ask_read"] == got["ask_run"] == ["ok", "'denied'"]
    assert not os.path.exists("/tmp/pwned")
    # the sandbox is still fine afterwards
    assert await pk.call_tool(pid, "t", {"ok": "1"}) == {"ok": ["ok", "1"]}


@pytest.mark.slow_ok
async def test_no_network(pk: Kernel) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    pid = agent(pk)
    try:
        got = await tool(pk, pid, APROBE, {
            "fetch": f"js.fetch('http://127.0.0.1:{port}/')",
            "connect": f"js.Deno.connect(js.JSON.parse('{{\"port\": {port}}}'))",
            "package": "__import__('pyodide_js').loadPackage('numpy')",
            "sock": "__import__('asyncio').open_connection('127.0.0.1', "
                    f"{port})",
        })
        assert refused(got["fetch"]) and refused(got["connect"]), got
        assert got["package"][0] != "ok" or "numpy" not in got["package"][1]
        assert got["sock"][0] != "ok"
        got = await tool(pk, pid, PROBE, {
            "socket": f"__import__('socket').create_connection(('127.0.0.1', {port}))",
            "urllib": f"__import__('urllib.request').request.urlopen('http://127.0.0.1:{port}')",
        }, name="t2")
        assert got["socket"][0] == "OSError" and got["urllib"][0] == "URLError"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected
    finally:
        listener.close()


async def test_the_channel_and_the_runtime_cannot_act_for_another_call(pk: Kernel) -> None:
    pid = agent(pk)
    got = await tool(pk, pid, PROBE, {
        "stdout": "js.Deno.stdout",
        "stdin": "js.Deno.stdin",
        "internal": "js.Deno.internal",
        "stdin_py": "sys.stdin.read()",
        "input": "input()",
        "prompt": "js.prompt('frame?')",  # Deno's prompt reads stdin only from a terminal
        "stderr": "js.Deno.stderr",
        "console": "js.console.log('\\x00\\x00\\x00\\x05 not a frame', js.Object.new())",
        "dev_stdout": "js.Deno.openSync('/dev/stdout', js.JSON.parse('{\"write\": true}'))",
        "proc_fd": "js.Deno.openSync('/proc/self/fd/1')",
        # the syscall function takes a call's token: 53 random bits, never a guessable id
        "other_call": "__import__('_libos_runtime')._js_syscall(1, 'fs.write', "
                      "js.JSON.parse('{\"path\": \"/data/x\", \"data\": \"x\"}'))",
        "next_call": "__import__('_libos_runtime')._js_syscall(libos._call.token + 1, "
                     "'fs.write', js.JSON.parse('{\"path\": \"/data/x\", \"data\": \"x\"}'))",
        "lift_cap": "setattr(js.WebAssembly.Memory.prototype, 'grow', None)",
    })
    assert got["stdout"][0] == got["stdin"][0] == got["internal"][0] == "AttributeError"
    assert got["stdin_py"] == ["ok", "''"]  # never the broker's frames
    assert got["input"][0] == "EOFError"
    assert got["prompt"][0] == "ok" and "frame" not in got["prompt"][1]
    assert got["stderr"][0] == "AttributeError"
    # JavaScript's console writes log frames of this call, never raw bytes on the channel
    assert got["console"][0] == "ok"
    assert "\x00\x00\x00\x05 not a frame {}" in logs(pk, pid)
    assert refused(got["dev_stdout"]) and refused(got["proc_fd"])
    assert got["other_call"][0] == got["next_call"][0] == "ok"
    assert "CANCELLED" in got["other_call"][1] and "CANCELLED" in got["next_call"][1]
    assert "read only" in got["lift_cap"][1]
    assert not audit_of(pk, pid, "fs.write")


async def test_a_libos_kept_past_its_call_is_revoked(pk: Kernel) -> None:
    pid = agent(pk)
    source = """
import asyncio
kept = []

async def run(args, libos):
    if args.get("first"):
        kept.append(libos)
        async def later():
            await asyncio.sleep(0.05)
            try:
                await libos.fs.write("/data/late", "x")
            except Exception as exc:
                kept.append(type(exc).__name__)
        kept.append(asyncio.ensure_future(later()))
        return "kept"
    await asyncio.sleep(0.2)  # the stray task runs now, during this call
    out = list(kept[2:])
    try:
        await kept[0].fs.write("/data/late2", "x")
    except Exception as exc:
        out.append(type(exc).__name__)
    return out
"""
    assert await tool(pk, pid, source, {"first": True}) == "kept"
    assert await pk.call_tool(pid, "t", {}) == ["Cancelled", "Cancelled"]
    assert not audit_of(pk, pid, "fs.write")


async def test_a_call_token_kept_past_its_call_is_refused(pk: Kernel) -> None:
    """The runtime's syscall function is one for every call; a call's token is what names
    it. A tool that keeps its token and hands it to that function in a later call (bypassing
    the revoked `libos`) is refused, and nothing is done or audited in anyone's name; the
    later call's own libos still works."""
    pid = agent(pk)
    source = """
import js
kept = []

def run(args, libos):
    if args.get("first"):
        kept.append(libos._call.token)
        return "kept"
    syscall = __import__("_libos_runtime")._js_syscall
    answer = syscall(kept[0], "fs.write", js.JSON.parse('{"path": "/data/late", "data": "x"}'))
    libos.fs.write("/data/mine", "y")
    return [answer[0], kept[0] != libos._call.token]
"""
    assert await tool(pk, pid, source, {"first": True}) == "kept"
    assert await pk.call_tool(pid, "t", {}) == ["CANCELLED", True]
    assert {r["resource"] for r in audit_of(pk, pid, "fs.write")} == {"/data/mine"}


async def test_call_tokens_are_distinct_random_and_die_with_their_call(pk: Kernel) -> None:
    """Each call's token is 53 random bits of its own: 300 calls get 300 distinct tokens, none
    its predecessor plus one, and the first call's token, kept, is refused in the last call
    while that call's own libos works."""
    pid = agent(pk)
    source = """
seen = []

def run(args, libos):
    seen.append(libos._call.token)
    if not args.get("last"):
        return len(seen)
    answer = __import__("_libos_runtime")._js_syscall(seen[0], "clock.now", {})
    return [seen, answer[0], libos.clock.now() > 0]
"""
    assert await tool(pk, pid, source) == 1
    for n in range(2, 300):
        assert await pk.call_tool(pid, "t", {}) == n
    tokens, refused, works = await pk.call_tool(pid, "t", {"last": True})
    assert [refused, works] == ["CANCELLED", True]
    assert len(tokens) == len(set(tokens)) == 300
    assert all(isinstance(t, int) and 0 <= t < 2 ** 53 for t in tokens)
    assert not any(b == a + 1 for a, b in itertools.pairwise(tokens))
    assert max(tokens) >= 2 ** 50  # the high words are used, not only the low ones


async def test_code_planted_in_the_runtime_acts_only_inside_its_tools_later_calls(
        pk: Kernel) -> None:
    """What ts-runtime/pyodide/libos.py says holds, and what it says does not: a patched
    `Libos.__init__` (the runtime is plain Python, open to tool code) sees the tool's next call's
    `libos` and writes in that call's name while it runs, audited under that call's
    invocation of the same tool; the `libos` it kept is refused once that call has ended, and
    nothing is done or audited for it."""
    pid = agent(pk)
    source = """
seen = []

def run(args, libos):
    if args.get("plant"):
        cls = type(libos)
        init = cls.__init__

        def spy(self, *a, **k):
            init(self, *a, **k)
            seen.append(self)
            if len(seen) == 1:
                self.fs.write("/data/planted.txt", "in the next call's name")
        cls.__init__ = spy
        return "planted"
    if len(seen) == 1:
        return "ran"
    try:
        seen[0].fs.write("/data/late.txt", "after its call")
    except Exception as exc:
        return type(exc).__name__
    return "wrote"
"""
    assert await tool(pk, pid, source, {"plant": True}) == "planted"
    assert await pk.call_tool(pid, "t", {}) == "ran"
    assert await pk.call_tool(pid, "t", {}) == "Cancelled"
    calls = [r["seq"] for r in audit_of(pk, pid, "tool.call")
             if r["phase"] in OPENS and r["resource"] == "t"]
    writes = [r for r in audit_of(pk, pid, "fs.write") if r["phase"] == "intent"]
    assert [(r["resource"], r["tool"], r["inv"]) for r in writes] == [
        ("/data/planted.txt", "t", calls[1])]


async def test_no_state_survives_into_another_processs_invocation(pk: Kernel) -> None:
    source = """
import builtins, js, os

def run(args, libos):
    seen = {
        "global": globals().get("mark"),
        "builtin": getattr(builtins, "mark", None),
        "js": str(getattr(js, "libosMark", None)),
        "file": os.path.exists("/tmp/mark"),
        "pid": js.performance.timeOrigin,  # which sandbox process: tools see no pid
    }
    globals()["mark"] = args["me"]
    builtins.mark = args["me"]
    try:
        js.libosMark = args["me"]  # refused: the global object is closed
    except Exception:
        pass
    open("/tmp/mark", "w").write(args["me"])
    return seen
"""
    a, b = agent(pk), agent(pk)
    await register(pk, a, "t", source)
    await register(pk, b, "t", source)
    first_a = await pk.call_tool(a, "t", {"me": "a"})
    again_a = await pk.call_tool(a, "t", {"me": "a"})
    first_b = await pk.call_tool(b, "t", {"me": "b"})
    assert first_a == {"global": None, "builtin": None, "js": "None", "file": False,
                       "pid": first_a["pid"]}
    # the same authority keeps its own sandbox (and its state) ...
    assert again_a["pid"] == first_a["pid"] and again_a["builtin"] == "a"
    # ... and another process never sees it: another OS process altogether
    assert first_b["pid"] != first_a["pid"]
    assert first_b == {"global": None, "builtin": None, "js": "None", "file": False,
                       "pid": first_b["pid"]}


# -- limits, while other processes are served --------------------------------------------------

async def _served_meanwhile(kernel: Kernel, attack: Any) -> list[Any]:
    """Run `attack` while another process calls an echo tool 10 times; return its results."""
    other = agent(kernel)
    await register(kernel, other, "echo", ECHO)
    results: list[Any] = []

    async def serve() -> None:
        for i in range(10):
            results.append(await kernel.call_tool(other, "echo", {"i": i}))
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await attack()
    assert results == [{"i": i} for i in range(10)]
    return results


async def test_an_infinite_loop_ends_at_the_deadline(pk: Kernel) -> None:
    pid = agent(pk)
    await register(pk, pid, "spin", "def run(args, libos):\n    while True:\n        pass\n")

    async def attack() -> None:
        t0 = trio.current_time()
        with pytest.raises(LimitExceeded, match="deadline"):
            await pk.call_tool(pid, "spin", {})
        assert trio.current_time() - t0 < LIMITS.deadline + DEADLINE_SLACK

    await _served_meanwhile(pk, attack)
    assert await tool(pk, pid, ECHO, {"after": 1}, name="e") == {"after": 1}


@pytest.mark.slow_ok
@pytest.mark.parametrize("bomb", [
    "keep = []\n    while True:\n        keep.append([0] * 100_000)",
    "keep = []\n    while True:\n        keep.append(bytearray(1 << 24))",
    "return len(bytearray((1 << 31) - 1))",
    "s = 'x'\n    while True:\n        s = s + s",
])
async def test_python_memory_bombs_end_in_limit_exceeded(pk: Kernel, bomb: str) -> None:
    pid = agent(pk)
    await register(pk, pid, "bomb", f"def run(args, libos):\n    {bomb}\n")

    async def attack() -> None:
        with pytest.raises(LimitExceeded):
            await pk.call_tool(pid, "bomb", {})

    await _served_meanwhile(pk, attack)
    assert await tool(pk, pid, ECHO, {"after": 1}, name="e") == {"after": 1}


@pytest.mark.slow_ok
@pytest.mark.parametrize("bomb", [
    # one huge WebAssembly memory, and many: RLIMIT_DATA refuses them
    "js.WebAssembly.Memory.new(js.JSON.parse('{\"initial\": 40000}'))",
    "[js.WebAssembly.Memory.new(js.JSON.parse('{\"initial\": 1600}')) for _ in range(100)]",
    "js.ArrayBuffer.new(2 ** 32)",
    "[js.Uint8Array.new(1 << 27).fill(1) for _ in range(40)]",
])
async def test_javascript_memory_bombs_end_in_limit_exceeded(pk: Kernel, bomb: str) -> None:
    pid = agent(pk)
    await register(pk, pid, "bomb", f"import js\ndef run(args, libos):\n    keep = {bomb}\n")

    async def attack() -> None:
        with pytest.raises(LimitExceeded):
            await pk.call_tool(pid, "bomb", {})

    await _served_meanwhile(pk, attack)
    assert await tool(pk, pid, ECHO, {"after": 1}, name="e") == {"after": 1}


@pytest.mark.slow_ok
async def test_an_output_flood_ends_at_the_output_cap(pk: Kernel) -> None:
    pid = agent(pk)
    await register(pk, pid, "flood",
                   "def run(args, libos):\n    while True:\n        print('x' * 1000)\n")

    async def attack() -> None:
        with pytest.raises(LimitExceeded, match="output"):
            await pk.call_tool(pid, "flood", {})

    await _served_meanwhile(pk, attack)
    assert sum(len(t) for t in logs(pk, pid)) <= LIMITS.max_output_bytes + 2000
    with pytest.raises(LimitExceeded):
        await tool(pk, pid, "def run(args, libos):\n    return 'y' * (1 << 20)\n", name="big")


@pytest.mark.slow_ok
async def test_a_syscall_flood_ends_at_the_syscall_cap_and_is_audited(pk: Kernel) -> None:
    pid = agent(pk)
    source = "def run(args, libos):\n    while True:\n        libos.clock.now()\n"
    with pytest.raises(LimitExceeded):
        await tool(pk, pid, source)
    records = audit_of(pk, pid, "clock.now")
    allowed = [r for r in records if r["phase"] in CLOSES and r["detail"].get("ok")]
    assert len(allowed) <= LIMITS.max_syscalls
    assert any(r["phase"] in ("denied", "rejected") for r in records)


async def test_denials_are_typed_in_python_and_audited(pk: Kernel) -> None:
    pid = agent(pk)
    source = """
def run(args, libos):
    out = []
    for path in ("/etc/passwd", "/data/../etc/passwd"):
        try:
            libos.fs.read_text(path)
        except libos.NotCapable as exc:
            out.append(["NotCapable", exc.code])
        except libos.InvalidArgument as exc:
            out.append(["InvalidArgument", exc.code])
    return out
"""
    got = await tool(pk, pid, source)
    assert got[0] == ["NotCapable", "NOT_CAPABLE"]
    assert got[1][1] in ("NOT_CAPABLE", "INVALID_ARGUMENT")
    denied = [r for r in audit_of(pk, pid, "fs.read") if r["phase"] in ("denied", "rejected")]
    assert denied and denied[0]["resource"] == "/etc/passwd"


async def test_cancelling_a_call_kills_its_sandbox(pk: Kernel, pyodide: PyodideSandbox) -> None:
    pid = agent(pk)
    await register(pk, pid, "spin", "def run(args, libos):\n    while True:\n        pass\n")
    assert await tool(pk, pid, ECHO, {"before": 1}, name="e") == {"before": 1}
    killed = pyodide.stats["killed"]
    with trio.move_on_after(0.5):
        await pk.call_tool(pid, "spin", {})
    await killed_since(pyodide, killed)
    assert await pk.call_tool(pid, "e", {"after": 1}) == {"after": 1}



# -- one call cannot reach another's syscalls -------------------------------------------------

# A Python tool that plants hooks wherever the runtime or a later tool might call them:
# builtins, the runtime module's attributes and classes, the `libos` module, sys.modules
# entries, trace/profile/audit hooks, JavaScript's built-ins. A hook walks up the frames of
# whoever called it, looking for a `libos` (or a call's syscall function), and writes a file
# in that call's name.
PY_PLANT = """
import asyncio, builtins, js, json, sys, types

seen = []
busy = []
used = []  # each libos (or syscall function) found is tried once

def grab(where, *values):
    if busy:
        return
    busy.append(where)
    try:
        seen.append(where)
        frame = sys._getframe(1)
        while frame is not None:
            for value in list(frame.f_locals.values()) + list(values):
                kind = type(value).__name__
                if kind not in ("Libos", "_Call") or any(value is u for u in used):
                    continue
                used.append(value)
                try:
                    if kind == "Libos":
                        value.fs.write("/data/planted.txt", where)
                    elif kind == "_Call":  # its token, with the runtime's syscall function
                        type(value).__init__.__globals__["_js_syscall"](
                            value.token, "fs.write",
                            js.JSON.parse('{"path": "/data/planted.txt", "data": "x"}'))
                except Exception:
                    pass
            frame = frame.f_back
    finally:
        busy.clear()

def hooked(where, original):
    def hook(*a, **k):
        grab(where, *a)
        return original(*a, **k)
    return hook

def run(args, libos):
    runtime = type(libos).__init__.__globals__
    plants = {
        "builtins.isinstance": lambda: setattr(builtins, "isinstance",
                                               hooked("isinstance", isinstance)),
        "builtins.len": lambda: setattr(builtins, "len", hooked("len", len)),
        "builtins.getattr": lambda: setattr(builtins, "getattr", hooked("getattr", getattr)),
        "runtime to_wire": lambda: runtime.__setitem__("to_wire",
                                                       hooked("to_wire", runtime["to_wire"])),
        "runtime from_wire": lambda: runtime.__setitem__(
            "from_wire", hooked("from_wire", runtime["from_wire"])),
        "runtime _syscall": lambda: runtime.__setitem__("_syscall",
                                                        hooked("_syscall", runtime["_syscall"])),
        "Libos._run": lambda: setattr(type(libos), "_run", hooked("_run", type(libos)._run)),
        "libos module": lambda: setattr(sys.modules["libos"], "NotCapable", type(
            "NotCapable", (Exception,), {"__init__": hooked("NotCapable", Exception.__init__)})),
        "sys.modules json": lambda: sys.modules.__setitem__("json", types.SimpleNamespace(
            dumps=hooked("json.dumps", json.dumps), loads=hooked("json.loads", json.loads))),
        "sys.modules runtime": lambda: sys.modules.__setitem__("_libos_runtime",
                                                               types.SimpleNamespace()),
        "asyncio.ensure_future": lambda: setattr(asyncio, "ensure_future", hooked(
            "ensure_future", asyncio.ensure_future)),
        "sys.setprofile": lambda: sys.setprofile(lambda frame, event, arg: grab("profile")
                                                 if frame.f_code.co_name == "run" else None),
        "sys.settrace": lambda: sys.settrace(lambda frame, event, arg: grab("trace")
                                             if frame.f_code.co_name == "run" else None),
        "sys.addaudithook": lambda: sys.addaudithook(lambda event, a: grab("audit")),
        "js WeakMap.prototype.set": lambda: setattr(js.WeakMap.prototype, "set",
                                                    js.Object.new),
        "js JSON.parse": lambda: setattr(js.JSON, "parse", js.Object.new),
    }
    out = {}
    for name, plant in plants.items():
        try:
            plant()
            out[name] = "planted"
        except BaseException as exc:
            out[name] = type(exc).__name__
    return {"plants": out, "pid": js.performance.timeOrigin}
"""

PY_REPORT = """
import json, js

def run(args, libos):
    text = libos.fs.read_text("/data/notes.txt")
    data = json.loads(json.dumps({"text": text, "n": len(text)}))
    return {"text": data["text"], "n": data["n"], "ok": isinstance(text, str),
            "pid": js.performance.timeOrigin}
"""


async def test_a_hook_planted_in_python_never_reaches_a_later_call_of_another_tool(
        pk: Kernel) -> None:
    pid = agent(pk)
    await pk.call_tool(pid, "write_file", {"path": "/data/notes.txt", "data": "notes"})
    await register(pk, pid, "plant", PY_PLANT)
    await register(pk, pid, "report", PY_REPORT)
    planting = await pk.call_tool(pid, "plant", {})
    report = await pk.call_tool(pid, "report", {})
    # the hooks fired in the plant's own call (its own writes, in its own name) and never in
    # the report's: the audit attributes each record to the tool and invocation that made it
    calls = {r["resource"]: r["seq"] for r in audit_of(pk, pid, "tool.call")
             if r["phase"] in OPENS}
    for r in audit_of(pk, pid, "fs.write"):
        assert r["tool"] == "write_file" or (r["tool"], r["inv"]) == ("plant", calls["plant"])
    mine = [r for r in pk.audit(pid) if r["inv"] == calls["report"]]
    assert {r["tool"] for r in mine} == {"report"} and {r["syscall"] for r in mine} == {"fs.read"}
    # the later call of another tool is unaffected: another sandbox process altogether
    assert report == {"text": "notes", "n": 5, "ok": True, "pid": report["pid"]}
    assert report["pid"] != planting["pid"]
    # hooks that would follow every later call of the plant's own are refused, and so are
    # JavaScript's built-ins; the rest only ever meets the plant's own later calls
    plants = planting["plants"]
    assert plants["sys.setprofile"] == plants["sys.settrace"] == "RuntimeError"
    assert plants["js WeakMap.prototype.set"] == plants["js JSON.parse"] == "JsException"


async def test_a_forged_failure_claims_no_broker_only_code(pk: Kernel) -> None:
    """A failure crosses as a Failure object that host.ts makes; a tool reaches the maker
    (`_libos_runtime._fail`) and can have the runtime answer with it in place of its result.
    A code only the broker may produce still arrives as the tool's own failure, naming what was
    claimed; a code a tool may claim is the one it could raise anyway; a Failure returned as
    a result is not plain data (the tool's failure); the next call is served as usual."""
    pid = agent(pk)
    source = """
rt = __import__('_libos_runtime')

def run(args, libos):
    if args["how"] == "returned":
        return rt._fail("NOT_CAPABLE", "returned")
    if args["how"] == "plain":
        return {"ok": 1}
    real = rt._result
    rt._result = lambda state, value: (setattr(rt, "_result", real),
                                       rt._fail(args["how"], "forged"))[1]
    return 1
"""
    with pytest.raises(ToolFailed, match="claiming 'CANCELLED'"):
        await tool(pk, pid, source, {"how": "CANCELLED"})
    with pytest.raises(ToolFailed, match="claiming 'SANDBOX_CRASHED'"):
        await pk.call_tool(pid, "t", {"how": "SANDBOX_CRASHED"})
    with pytest.raises(NotCapable, match="forged"):
        await pk.call_tool(pid, "t", {"how": "NOT_CAPABLE"})
    with pytest.raises(ToolFailed, match="cannot be sent"):
        await pk.call_tool(pid, "t", {"how": "returned"})
    assert await pk.call_tool(pid, "t", {"how": "plain"}) == {"ok": 1}
    assert not audit_of(pk, pid, "fs.write")


# -- a call's arguments: the JSON path and the conversion path agree ---------------------------

ARG_REPR = "def run(args, libos):\n    return [repr(args['v']), type(args['v']).__name__]\n"


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"k": [value]}
    return value


EDGE_ARGS: dict[str, Any] = {
    "safe integers": [2**53 - 1, -(2**53 - 1), 0],
    "unsafe integers": [2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1],
    "floats": [0.1, 5e-324, 1e308, -1e-300, 1.5, 2.0**60 + 0.5],
    "non-finite": [float("inf"), float("-inf")],
    "zeros": [-0.0, 0.0, 1.0],
    "keys": {"__proto__": {"polluted": 1}, "constructor": 2, "": 3, "\u2028": 4,
             "toString": 5, "a\x00b": 6, "\U0001f600": 7},
    "strings": ["\u2028\u2029", "\x00\x1f\x7f", "\U0001f600", "\\u0000", '"\\', "\ufeff",
                "\ufeffleading", " padded ", "1e400"],
    "nesting": _nested(15),
    "empties": [[], {}, "", [[]], [{}]],
}


@pytest.mark.parametrize("case", sorted(EDGE_ARGS))
async def test_json_arguments_mean_what_converted_ones_do(pk: Kernel, case: str) -> None:
    """Attack on the arguments' fast path (JSON text parsed by the C scanner alone): values
    at JSON's edges (big and unsafe integers, -0, non-finite floats, keys that are JS
    prototypes' names, separators, NUL, BOM, deep nesting) reach the tool exactly as the
    same values do through Pyodide's conversion (a bytes value beside them forces that path),
    and text that is not Unicode is a typed error, audited, before any tool runs."""
    pid = agent(pk)
    await register(pk, pid, "r", ARG_REPR)
    value = EDGE_ARGS[case]
    fast = await pk.call_tool(pid, "r", {"v": value})
    converted = await pk.call_tool(pid, "r", {"v": value, "force": b"\x00"})
    assert fast == converted
    if case not in ("zeros", "non-finite"):  # (a JS number that is whole crosses as an int)
        assert fast[0] == repr(value)
    with pytest.raises(InvalidArgument, match="not Unicode"):
        await pk.call_tool(pid, "r", {"v": value, "lone": "\ud800"})
    refused = audit_of(pk, pid, "tool.call")[-1]
    assert refused["phase"] == "rejected" and refused["detail"]["error"] == "INVALID_ARGUMENT"
    assert await pk.call_tool(pid, "r", {"v": "still served"}) == ["'still served'", "str"]


# -- the runtime cache a Pyodide sandbox's DENO_DIR shares with the template -------------------

async def test_a_python_tool_cannot_change_the_compiled_modules_its_deno_dir_shares(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack on the linked runtime cache from Python: the service's compiled host modules
    are the template's inodes (and V8's code cache of pyodide.asm.mjs a copy of the
    template's), which every later Pyodide service starts from. Through `js.Deno` a tool
    (told the paths) can neither write, truncate, remove, rename nor read them; the template
    keeps its bytes and inodes, and the tool's neighbour call is served."""
    from sandboxes import deno_cache
    from sandboxes.pyodide import pyodide_dir
    from tests.sandboxes.conftest import kernel_over
    from tests.sandboxes.test_deno_register import _cache_files
    # A template of its own; Pyodide itself stays where it is (the cache moves with XDG).
    monkeypatch.setenv("LIBOS_PYODIDE_DIR", str(pyodide_dir()))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    async with PyodideSandbox(spares=1, memory_mb=LIMITS.memory_mb) as py:
        template = deno_cache.template_dir(py.argv(py.memory_mb, py.runtime))
        async with kernel_over(tmp_path / "k0", py) as k:
            assert await tool(k, agent(k), ECHO, {"a": 1}) == {"a": 1}
            with trio.fail_after(60):
                while not (template / "gen").is_dir():
                    await trio.sleep(0.05)
    before = _cache_files(template)
    async with PyodideSandbox(spares=1, memory_mb=LIMITS.memory_mb) as py:
        with trio.fail_after(10):
            await py._seeded.wait()
        service = Path(py._env["DENO_DIR"])
        linked = [p for p in (service / "gen").rglob("*.js") if p.stat().st_nlink > 1]
        assert linked
        target = str(max(linked, key=lambda p: p.stat().st_size))
        databases = [str(p) for p in service.rglob("*") if p.is_file() and p not in linked]
        async with kernel_over(tmp_path / "k1", py) as k:
            pid = agent(k)
            attacks = {
                "write": f"js.Deno.writeTextFileSync({target!r}, 'globalThis.pwned = 1;')",
                "append": f"js.Deno.writeTextFileSync({target!r}, ';1', append=True)",
                "open": f"js.Deno.openSync({target!r}, write=True)",
                "truncate": f"js.Deno.truncateSync({target!r}, 0)",
                "remove": f"js.Deno.removeSync({target!r})",
                "rename": f"js.Deno.renameSync({target!r}, {target + '.x'!r})",
                "read": f"js.Deno.readTextFileSync({target!r})",
                **{f"database {i}": f"js.Deno.writeFileSync({d!r}, js.Uint8Array.new(4))"
                   for i, d in enumerate(databases)},
            }
            out = await tool(k, pid, PROBE, attacks)
            assert {name for name, result in out.items() if not refused(result)} == set(), out
            outcome = [r for r in audit_of(k, pid, "tool.call") if r["phase"] in CLOSES][-1]
            assert "error" not in outcome["detail"]  # refused inside the tool, which went on
            assert await tool(k, pid, ECHO, {"still": "here"}, name="echo") == {"still": "here"}
    assert _cache_files(template) == before


async def test_a_syscall_result_with_a_constructor_key_is_a_dict(pk: Kernel) -> None:
    """The same through a syscall's answer: an object stored by one call (its keys are data,
    a model's or a page's) comes back from obj.get as a dict, not a JsProxy of the decoder's
    object (whose methods a tool checking `isinstance(x, dict)` would never expect)."""
    pid = agent(pk)
    source = """
def run(args, libos):
    libos.obj.put("note", "json", args["v"], reason="keep it")
    got = libos.obj.get("note")["value"]
    return [type(got).__name__, type(got["inner"]).__name__, got == args["v"]]
"""
    value = {"constructor": "x", "inner": {"constructor": {"k": 1}}, "b": [{"constructor": 1}]}
    assert await tool(pk, pid, source, {"v": value}) == ["dict", "dict", True]
    gets = [r for r in audit_of(pk, pid, "obj.get") if r["phase"] in CLOSES]
    assert gets and gets[-1]["detail"]["ok"]
    assert await tool(pk, pid, ECHO, {"still": "here"}, name="echo") == {"still": "here"}
