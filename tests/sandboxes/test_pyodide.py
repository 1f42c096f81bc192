"""Python tools through the broker: a real kernel over SQLite, real Pyodide in a Deno process.

Registration (parsed and compiled by Pyodide's own Python, never run), calls, arguments and
results both ways, the `libos` object generated from the syscall table (Pythonic names,
sync and async tools), typed errors both ways, print as log events, the Deno flags, the
snapshot, the warm pool, the Python heap cap, and `libos setup`'s directory rules.

Skipped where `libos setup` has not installed Pyodide (CI runs it first).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest
import trio

from broker import (
    InvalidArgument,
    Kernel,
    LimitExceeded,
    NotCapable,
    ToolFailed,
)
from broker import errors as broker_errors
from broker.store.audit import CLOSES
from broker.syscalls import describe
from sandboxes import deno_cache
from sandboxes.base import CallLimits, ToolCode
from sandboxes.deno_launch import DENY, find_deno
from sandboxes.pyodide import (
    ASSETS,
    PY_RUNTIME,
    PYODIDE_VERSION,
    SNAPSHOT,
    STAMP,
    PyodideSandbox,
    pyodide_available,
    pyodide_dir,
    pyodide_flags,
    runtime_hash,
    setup,
)
from sandboxes.testing import NullHost
from tests.pyodide_remade import Remade
from tests.sandboxes.conftest import (
    LIMITS,
    agent,
    audit_of,
    killed_since,
    logs,
    register_tool,
    run_tool,
)

pytestmark = pytest.mark.skipif(not pyodide_available(),
                                reason="Pyodide is not installed: run `libos setup`")


# -- fixtures and helpers (also used by test_pyodide_attacks.py and test_contract.py) -----

register = partial(register_tool, lang="python")
tool = partial(run_tool, lang="python")


ECHO = "def run(args, libos):\n    return args\n"


# -- registration ---------------------------------------------------------------------------

async def test_register_stores_the_source_content_addressed(pk: Kernel) -> None:
    pid = agent(pk)
    out = await register(pk, pid, "echo", ECHO, description="echo its arguments")
    assert out == {"name": "echo", "lang": "python",
                   "hash": hashlib.sha256(ECHO.encode()).hexdigest()}
    assert pk.store.get_tool_source(out["hash"])[1] == ECHO.encode()
    tools = {t["name"]: t for t in pk.list_tools(pid)}
    assert tools["echo"]["lang"] == "python"
    assert tools["echo"]["description"] == "echo its arguments"


@pytest.mark.parametrize(("source", "message"), [
    ("def run(args, libos:\n    return 1\n", "SyntaxError"),
    ("x = 1\n", "no top-level run"),
    ("def run(args):\n    return 1\n", r"run must take \(args, libos\)"),
    ("def helper(args, libos):\n    def run(a, b): pass\n", "no top-level run"),
    ("def run(args, libos):\n    return 1\nreturn 2\n", "SyntaxError"),
    ("def run(args, libos):\n    yield from\n", "SyntaxError"),
])
async def test_registration_refuses_what_is_not_a_tool(pk: Kernel, source: str,
                                                       message: str) -> None:
    pid = agent(pk)
    with pytest.raises(InvalidArgument, match=message):
        await register(pk, pid, "bad", source)
    assert "bad" not in {t["name"] for t in pk.list_tools(pid)}
    rejected = [r for r in audit_of(pk, pid, "tool.register") if r["phase"] == "outcome"]
    assert rejected[-1]["detail"]["ok"] is False
    await register(pk, pid, "good", ECHO)  # the checker survives a bad tool


async def test_registration_parses_with_pyodides_python_and_never_runs_the_tool(
        pk: Kernel) -> None:
    pid = agent(pk)
    # 3.12+ syntax (the broker's own Python may be older), and top-level code that would
    # loop forever if the checker ran it.
    source = ("type Pair = tuple[int, int]\nwhile True:\n    pass\n"
              "def run[T](args: T, libos) -> T:\n    return args\n")
    await register(pk, pid, "generic", source)


async def test_a_process_tool_is_checked_in_the_sandbox_that_runs_its_first_call(
        pk: Kernel, pyodide: PyodideSandbox) -> None:
    """No checker process: the spare that checks (compiles, never runs) a process's tool is
    bound to the tool's authority and code, and its first call runs there. A refused tool
    kills the spare it was checked in; the next registration takes another."""
    await pyodide.warm()
    pid = agent(pk)
    started = pyodide.stats["started"]
    source = "print('top level ran')\ndef run(args, libos):\n    return args\n"
    await register(pk, pid, "echo", source)
    assert pyodide._checker is None
    assert pyodide.stats["spare_acquires"] == 1
    checked = next(iter(pyodide.pool.lru))  # the one idle sandbox: the one that checked
    assert checked.authority.endswith("#" + hashlib.sha256(source.encode()).hexdigest())
    assert await pk.call_tool(pid, "echo", {"a": 1}) == {"a": 1}
    assert pyodide.stats["warm_acquires"] == 1 and checked.loaded == {"echo": checked.loaded[
        "echo"]}
    # the check never ran the module: its print came with the first call only
    assert [e for e in logs(pk, pid) if "top level ran" in e] == ["top level ran"]
    killed = pyodide.stats["killed"]
    with pytest.raises(InvalidArgument, match="no top-level run"):
        await register(pk, pid, "bad", "x = 1\n")
    await killed_since(pyodide, killed, 10)
    await register(pk, pid, "good", ECHO)
    assert await pk.call_tool(pid, "good", {"b": 2}) == {"b": 2}
    assert pyodide._checker is None
    assert pyodide.stats["started"] - started <= 3  # spares only, never a checker


async def test_registration_refuses_a_source_that_is_not_utf8(pk: Kernel) -> None:
    pid = agent(pk)
    with pytest.raises(InvalidArgument, match="UTF-8"):
        await pk.call_tool(pid, "register_tool", {
            "name": "bad", "lang": "python", "source": b"def run(args, libos):\n    '\xff'\n"})


async def test_registration_needs_the_capability(pk: Kernel) -> None:
    pid = agent(pk, ["fs:/data/**:read"])
    with pytest.raises(NotCapable):
        await register(pk, pid, "echo", ECHO)
    assert audit_of(pk, pid, "tool.register")[-1]["phase"] == "denied"


# -- calls: arguments, results, both kinds of run ---------------------------------------------

async def test_values_cross_both_ways(pk: Kernel) -> None:
    pid = agent(pk)
    args = {"s": "héllo ☃", "i": -(2 ** 40), "f": 2.5, "t": True, "n": None,
            "l": [1, [2, [3]]], "d": {"k": {"j": "v"}}}
    assert await tool(pk, pid, ECHO, args) == args
    source = """
def run(args, libos):
    return {"bytes": b"\\x00\\xff", "tuple": (1, 2), "big": 2 ** 62, "types": sorted(
        type(v).__name__ for v in args.values())}
"""
    got = await tool(pk, pid, source, {"a": 1, "b": "x", "c": None, "d": [], "e": {}},
                     name="t2")
    assert got == {"bytes": b"\x00\xff", "tuple": [1, 2], "big": 2 ** 62,
                   "types": ["NoneType", "dict", "int", "list", "str"]}


@pytest.mark.parametrize(("ret", "message"), [
    ("object()", "a object cannot be sent"),
    ("{1: 2}", "dict keys must be str"),
    ("{3}", "a set cannot be sent"),
    ("lambda: 1", "a function cannot be sent"),
])
async def test_results_that_cannot_be_sent_are_typed_errors(pk: Kernel, ret: str,
                                                            message: str) -> None:
    pid = agent(pk)
    with pytest.raises(ToolFailed, match=message):  # the tool's own failure
        await tool(pk, pid, f"def run(args, libos):\n    return {ret}\n")
    assert await pk.call_tool(pid, "register_tool", {"name": "e", "lang": "python",
                                                     "source": ECHO})
    assert await pk.call_tool(pid, "e", {"x": 1}) == {"x": 1}


async def test_async_run_awaits_syscalls_and_asyncio(pk: Kernel) -> None:
    pid = agent(pk)
    source = """
import asyncio

async def run(args, libos):
    await libos.fs.write("/data/a.txt", "alpha")
    await asyncio.sleep(0.01)
    parts = await asyncio.gather(libos.fs.read_text("/data/a.txt"), asyncio.sleep(0, "x"))
    try:
        await libos.fs.read("/nope/x")
    except libos.NotCapable as exc:
        code = exc.code
    return parts + [code]
"""
    assert await tool(pk, pid, source) == ["alpha", "x", "NOT_CAPABLE"]


async def test_module_state_lives_within_one_sandbox_of_one_authority(pk: Kernel) -> None:
    pid = agent(pk)
    source = "n = 0\ndef run(args, libos):\n    global n\n    n += 1\n    return n\n"
    assert await tool(pk, pid, source) == 1
    assert await pk.call_tool(pid, "t", {}) == 2
    # a new version of the tool starts over
    await register(pk, pid, "t", source + "# v2\n", replace=True)
    assert await pk.call_tool(pid, "t", {}) == 1


# -- the libos object -----------------------------------------------------------------------

async def test_libos_has_every_syscall_of_the_table_with_its_parameters(pk: Kernel) -> None:
    pid = agent(pk)
    source = """
def run(args, libos):
    out = {}
    for name in args["names"]:
        family, op = name.split(".", 1)
        fn = getattr(getattr(libos, family), op)
        out[name] = fn.__doc__
    return {"ops": out, "tools_alias": libos.tools.call.__qualname__,
            "errors": sorted(libos.errors.by_code)}
"""
    table = describe()
    got = await tool(pk, pid, source, {"names": [d["name"] for d in table]})
    for d in table:
        params = ", ".join(d["schema"].get("properties", {}))
        assert got["ops"][d["name"]] == f"{d['name']}({params})"
    assert got["tools_alias"] == "tool.call"
    codes = sorted(cls.code for cls in vars(broker_errors).values()
                   if isinstance(cls, type) and issubclass(cls, broker_errors.LibosError)
                   and cls is not broker_errors.LibosError)
    assert got["errors"] == codes


async def test_syscalls_positional_keyword_and_by_name_are_audited(pk: Kernel) -> None:
    pid = agent(pk)
    source = """
def run(args, libos):
    libos.fs.write("/data/n.txt", "one two three")
    a = libos.fs.read_text("/data/n.txt")
    b = libos.fs.read(path="/data/n.txt", offset=4, length=3)
    c = libos.syscall("fs.read", {"path": "/data/n.txt", "binary": True})
    d = libos.fs.read_bytes("/data/n.txt", 8)
    libos.obj.put("note", "json", {"a": a}, reason="keep it")
    e = libos.obj.get("note")["value"]
    return [a, b, c, d, e, type(libos.clock.now()).__name__]
"""
    got = await tool(pk, pid, source)
    assert got == ["one two three", "two", b"one two three", b"three",
                   {"a": "one two three"}, "float"]
    reads = [r for r in audit_of(pk, pid, "fs.read") if r["phase"] in CLOSES]
    assert len(reads) == 4 and all(r["detail"]["ok"] for r in reads)
    assert [r for r in audit_of(pk, pid, "obj.put") if r["phase"] == "intent"]


@pytest.mark.parametrize(("call", "message"), [
    ('libos.fs.read("/data/x", 0, 1, False, "r", "extra")', "at most 5 arguments"),
    ('libos.fs.read(paht="/data/x")', "no argument 'paht'"),
    ('libos.fs.read("/data/x", path="/data/y")', "given twice"),
    ('libos.fs.write("/data/x", object())', "a object cannot be sent"),
    ('libos.syscall("fs.read", ["x"])', "arguments must be a dict"),
])
async def test_bad_calls_of_wrappers_are_invalid_argument(pk: Kernel, call: str,
                                                          message: str) -> None:
    pid = agent(pk)
    source = f"def run(args, libos):\n    {call}\n"
    with pytest.raises(InvalidArgument, match=message):
        await tool(pk, pid, source)


async def test_an_unknown_family_or_op_is_attribute_error(pk: Kernel) -> None:
    pid = agent(pk)
    source = """
def run(args, libos):
    out = []
    for expr in ("libos.nope", "libos.fs.nope"):
        try:
            eval(expr, {"libos": libos})
        except AttributeError as exc:
            out.append(str(exc))
    return out
"""
    assert await tool(pk, pid, source) == ["libos has no 'nope'", "libos.fs has no 'nope'"]


# -- typed errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["NotCapable", "ApprovalDenied", "InvalidArgument",
                                  "LimitExceeded", "NotFound", "Conflict", "ToolFailed"])
async def test_a_typed_error_raised_by_a_tool_keeps_its_code(pk: Kernel, name: str) -> None:
    pid = agent(pk)
    source = f"import libos as L\ndef run(args, libos):\n    raise L.{name}('said so')\n"
    cls = getattr(broker_errors, name)
    with pytest.raises(cls, match="said so"):
        await tool(pk, pid, source)


async def test_other_exceptions_are_tool_failed_with_the_tools_line(pk: Kernel) -> None:
    pid = agent(pk)
    source = "def run(args, libos):\n    x = 1\n    return args['missing']\n"
    with pytest.raises(ToolFailed) as info:
        await tool(pk, pid, source)
    assert "KeyError: 'missing'" in info.value.message
    assert '<tool t>", line 3' in info.value.message
    assert "libos runtime" not in info.value.message


async def test_recursion_is_limit_exceeded_and_the_sandbox_goes_on(pk: Kernel) -> None:
    pid = agent(pk)
    with pytest.raises(LimitExceeded, match="RecursionError"):
        await tool(pk, pid, "def run(args, libos):\n    return run(args, libos)\n")
    assert await tool(pk, pid, ECHO, {"ok": 1}, name="e") == {"ok": 1}


@pytest.mark.parametrize("source", [
    "import sys\ndef f(n):\n    return f(n + 1) + 1\n"
    "def run(args, libos):\n    sys.setrecursionlimit(10 ** 6)\n    return f(0)\n",
    "import json\ndef run(args, libos):\n    x = []\n    for _ in range(100_000):\n"
    "        x = [x]\n    return len(json.dumps(x))\n",
])
@pytest.mark.slow_ok  # deep recursion can take more than 2 s on a loaded machine
async def test_a_webassembly_stack_overflow_is_limit_exceeded(pk: Kernel, source: str) -> None:
    """Past the recursion limit (raised by the tool, or C code recursing), the WebAssembly
    stack overflows (or the heap cap is reached first): Pyodide cannot go on, so the process
    leaves; the call is LimitExceeded and the next call gets a fresh sandbox."""
    pid = agent(pk)
    with pytest.raises(LimitExceeded, match=r"stack|heap cap"):
        await tool(pk, pid, source)
    assert await tool(pk, pid, ECHO, {"ok": 1}, name="e") == {"ok": 1}


async def test_a_tool_is_loaded_again_when_the_driver_asks(pyodide: PyodideSandbox) -> None:
    code = ToolCode("t", "python", ECHO.encode(), "h1")
    assert await pyodide.call(code, {"a": 1}, NullHost(), LIMITS) == {"a": 1}
    sb = next(iter(pyodide.pool.idle.values()))[0]
    sb.loaded.clear()  # the driver believes nothing is loaded: it sends the tool again
    assert await pyodide.call(code, {"a": 2}, NullHost(), LIMITS) == {"a": 2}
    assert sb.loaded == {"t": "h1"}


# -- output ------------------------------------------------------------------------------------

async def test_print_and_stderr_are_log_events_of_the_call(pk: Kernel) -> None:
    pid = agent(pk)
    source = "import sys\ndef run(args, libos):\n    print('hello', 42)\n" \
             "    print('careful', file=sys.stderr)\n    print('a\\nb', 'tail', end='')\n" \
             "    return 1\n"
    assert await tool(pk, pid, source) == 1
    events = [(e["data"]["level"], e["data"]["text"]) for e in pk.store.events(pid=pid)
              if e["kind"] == "log"]
    assert events == [("info", "hello 42"), ("warn", "careful"), ("info", "a"),
                      ("info", "b tail")]


# -- memory ------------------------------------------------------------------------------------

async def test_the_python_heap_cap_is_limit_exceeded_and_the_worn_sandbox_leaves(
        pk: Kernel, pyodide: PyodideSandbox) -> None:
    pid = agent(pk)
    source = "def run(args, libos):\n    keep = []\n    while True:\n" \
             "        keep.append(bytearray(1 << 20))\n"
    with pytest.raises(LimitExceeded):
        await tool(pk, pid, source)
    assert await tool(pk, pid, ECHO, {"after": True}, name="e") == {"after": True}


# -- the sandbox process -----------------------------------------------------------------------

def test_flags_read_exactly_the_pyodide_directory_and_deny_everything_else(
        tmp_path: Path) -> None:
    flags = pyodide_flags(96, tmp_path)
    assert f"--allow-read={tmp_path}" in flags
    assert "--deny-read" not in flags
    assert [f for f in flags if f.startswith("--allow")] == [f"--allow-read={tmp_path}"]
    for deny in DENY:
        if deny != "--deny-read":
            assert deny in flags
    for flag in ("--no-prompt", "--no-remote", "--no-npm", "--no-config", "--no-lock"):
        assert flag in flags
    assert any("--max-old-space-size=96" in f and "--disallow-code-generation-from-strings"
               in f for f in flags)


def test_the_directory_holds_the_runtime_files_and_the_snapshot_only() -> None:
    d = pyodide_dir()
    names = {p.name for p in d.iterdir()}
    assert names == {*ASSETS, SNAPSHOT, "libos-setup.json"}
    assert all(not (d / n).stat().st_mode & 0o222 for n in names)


def test_pyodide_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("LIBOS_PYODIDE_DIR", str(tmp_path / "py"))
    assert pyodide_dir() == (tmp_path / "py").resolve()
    assert not pyodide_available()
    monkeypatch.delenv("LIBOS_PYODIDE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert pyodide_dir() == (tmp_path / "libos" / f"pyodide-{PYODIDE_VERSION}").resolve()


def test_setup_is_offline_once_installed_and_remakes_a_stale_snapshot(
        remade_pyodide: Remade, monkeypatch: pytest.MonkeyPatch) -> None:
    # The shared remake: `libos setup` with no npm on PATH (nothing can be fetched).
    d = remade_pyodide.directory
    assert remade_pyodide.returncode == 0, remade_pyodide.stderr[-3000:]
    assert remade_pyodide.stdout.endswith(f"ready in {d}\n")
    assert json.loads((d / STAMP).read_text())["runtime_sha256"] == runtime_hash()
    monkeypatch.setenv("PATH", "/nonexistent")
    made = (d / SNAPSHOT).stat().st_mtime_ns
    assert setup(d, quiet=True) == d  # up to date: left alone
    assert (d / SNAPSHOT).stat().st_mtime_ns == made
    assert pyodide_available(d)


def test_setup_makes_the_deno_cache_template_a_sandbox_seeds_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A service makes a missing template in the background, by starting Pyodide once more:
    # a short run (`libos demo`) killed it every time, so no demo of a new install got one.
    d = tmp_path / "pyodide"
    d.mkdir()
    for name in (*ASSETS, SNAPSHOT, STAMP):
        shutil.copy(pyodide_dir() / name, d / name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no template yet
    sandbox = PyodideSandbox(directory=d)
    template = deno_cache.template_dir(sandbox.argv(sandbox.memory_mb, sandbox.runtime))
    assert not template.exists()
    assert setup(d, quiet=True) == d
    assert template.is_dir() and any(template.iterdir())


def test_a_sandbox_without_the_runtime_is_refused(tmp_path: Path) -> None:
    from broker.errors import SandboxCrashed

    with pytest.raises(SandboxCrashed, match="libos setup"):
        PyodideSandbox(directory=tmp_path)


def test_the_host_type_checks(tmp_path: Path) -> None:
    out = subprocess.run(
        [find_deno(), "check", "--no-remote", "--no-npm", "--no-config", "--no-lock",
         *(str(p) for p in sorted(PY_RUNTIME.glob("*.ts")))],
        env={"NO_COLOR": "1", "DENO_DIR": str(tmp_path / "deno-dir"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]


async def test_a_started_sandbox_runs_and_the_pool_hides_the_next_start(
        pyodide: PyodideSandbox) -> None:
    """(How fast the snapshot starts one is measured in `bench/`, never asserted here.)"""
    await pyodide.warm()
    sb = await pyodide._start(LIMITS.memory_mb)
    sb.kill(LimitExceeded("done"))
    code = ToolCode("t", "python", ECHO.encode(), "h")
    assert await pyodide.call(code, {"x": 1}, NullHost(),
                              CallLimits(memory_mb=LIMITS.memory_mb)) == {"x": 1}
    assert pyodide.stats["spare_acquires"] == 1  # the call took a spare: no start waited for


async def test_without_the_snapshot_pyodide_boots_and_runs_the_runtime_itself(
        tmp_path: Path) -> None:
    """A directory without the snapshot (or with a stale one) still works, only slower."""
    bare = tmp_path / "pyodide"
    bare.mkdir()
    for name in ASSETS:
        (bare / name).write_bytes((pyodide_dir() / name).read_bytes())
    # (A boot without the snapshot is the slow one: on a loaded machine it outlasts the
    # default startup timeout, which is not what this tests.)
    async with PyodideSandbox(spares=0, directory=bare, memory_mb=LIMITS.memory_mb,
                              startup_timeout=180.0) as sb:
        code = ToolCode("t", "python", b"import libos\ndef run(args, libos):\n"
                        b"    return [args, libos.clock.now()]\n", "h")
        assert await sb.call(code, {"x": 1}, NullHost(), LIMITS) == [{"x": 1}, None]
        with pytest.raises(InvalidArgument, match="no top-level run"):
            await sb.prepare("bad", "python", b"x = 1\n")


async def test_a_process_that_says_it_is_another_kind_is_refused() -> None:
    from broker.errors import SandboxCrashed
    from sandboxes.deno import MAIN

    async with PyodideSandbox(spares=0, memory_mb=LIMITS.memory_mb) as sb:
        sb.runtime = MAIN  # the TypeScript runtime: it says hello as "deno"
        with pytest.raises(SandboxCrashed, match="did not start"):
            await sb.call(ToolCode("t", "python", ECHO.encode(), "h"), {}, NullHost(), LIMITS)


async def test_a_call_cancelled_while_its_sandbox_starts_leaves_no_process() -> None:
    async with PyodideSandbox(spares=0, memory_mb=LIMITS.memory_mb) as sb:
        # Cancelled once its process is spawned, before Pyodide says it is ready (a fixed
        # delay raced the spawn itself on a loaded machine: nothing had started to leave).
        async def call() -> None:
            await sb.call(ToolCode("t", "python", ECHO.encode(), "h"), {}, NullHost(), LIMITS)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            with trio.fail_after(60):
                while not sb.stats["started"]:
                    await trio.sleep(0.001)
            assert sb._all and not any(p.ready.is_set() for p in sb._all)  # not yet ready
            nursery.cancel_scope.cancel()
        with trio.fail_after(5):
            while sb._all:
                await trio.sleep(0.01)
        assert sb.stats["started"] == sb.stats["killed"] == 1
