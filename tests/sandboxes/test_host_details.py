"""No host detail reaches tool code (issue 14, item 5), in each language.

Where and how the broker runs (the Deno executable's path, the host's working directory and
process ids, where libos or Pyodide is installed, the driver's temporary directory) is none of
a tool's business. A TypeScript tool asking Deno gets `NotCapable`, as for the APIs that need
a permission; Python asking through `js` gets the same, and Python's own view of its process
(sys.executable, the cwd, the pid, the environment) is Pyodide's virtual machine, never the
host's; stack traces name the runtime's modules without their host path; a WebAssembly tool
has no API but the syscalls, whose answers are in the process's virtual tree. Each test also
makes the sanctioned call a tool does use (`fs.cwd`, the process's own virtual cwd).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from broker import InvalidArgument, Kernel, NotCapable, NotFound
from sandboxes.deno import DenoSandbox
from sandboxes.deno_launch import find_deno
from sandboxes.pyodide import PyodideSandbox, pyodide_dir
from sandboxes.wasm import WasmSandbox
from tests.sandboxes.conftest import SLOW_OK, Served, agent, kernel_over, run_tool
from tests.sandboxes.test_wasm import register as register_wat
from tests.sandboxes.test_wasm import start, syscall_tool

REPO = Path(__file__).resolve().parents[2]


def host_paths(tmp_path: Path, sandbox: Any = None) -> list[str]:
    """Host paths a tool must never see. (Not the home directory: here it may be /root,
    which Pyodide's own build paths in sysconfig start with too.)"""
    paths = [str(REPO), find_deno(), str(tmp_path), os.getcwd()]
    if sandbox is not None and getattr(sandbox, "_tmp", None):
        paths.append(sandbox._tmp)
    if isinstance(sandbox, PyodideSandbox):
        paths.append(str(pyodide_dir()))
    return [p for p in paths if p not in ("", "/")]


def host_pids(served: Served | None = None) -> set[int]:
    pids = {os.getpid(), os.getppid()}
    if served is not None:
        pids |= {os_pid for _, _, os_pid in served.calls}
    return pids


def assert_no_host_detail(seen: Any, paths: list[str], pids: set[int]) -> None:
    text = json.dumps(seen)
    for path in paths:
        at = text.find(path)
        assert at < 0, (path, text[max(0, at - 300):at + 100])
    assert "file://" not in text, text
    numbers = {int(n) for n in _numbers(seen)}
    assert not numbers & pids, (numbers & pids, text)


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, str):
        return [int(part) for part in value.replace("=", " ").split() if part.isdigit()]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return []


# -- TypeScript --------------------------------------------------------------------------------

TS_PROBE = r"""
// (The tool's own frames name its source as a data: URL, shortened here to keep the result
// small.)
const short = (stack: unknown) => String(stack).replace(/data:.*?(?=:\d+:\d+\)?$)/gm, "data:…");

export default async function run(args: any, libos: any) {
  const attempt = (f: () => unknown) => {
    try { return {value: short(f())}; }
    catch (e: any) { return {code: e.code ?? e.name, message: e.message, stack: short(e.stack)}; }
  };
  const out: Record<string, unknown> = {
    execPath: attempt(() => Deno.execPath()), cwd: attempt(() => Deno.cwd()),
    pid: attempt(() => Deno.pid), ppid: attempt(() => Deno.ppid),
    mainModule: attempt(() => (Deno as any).mainModule), args: attempt(() => (Deno as any).args),
    replaced: attempt(() => { (Deno as any).pid = 1; return (Deno as any).execPath(); }),
    restack: attempt(() => { (Error as any).prepareStackTrace = (e: any, f: any[]) =>
      f.map((x) => x.getFileName()).join(" "); return new Error("x").stack; }),
    stack: short(new Error("here").stack),
    virtualCwd: await libos.fs.cwd(),
  };
  try { await libos.fs.read("/nope"); } catch (e: any) { out.syscallStack = short(e.stack); }
  try { (null as any).x; } catch (e: any) { out.typeErrorStack = short(e.stack); }
  // Every plain value a level or two below Deno and the global object.
  const values: string[] = [];
  for (const [root, name] of [[Deno, "Deno"], [globalThis, "globalThis"]] as const) {
    for (const key of Reflect.ownKeys(root)) {
      let v: any;
      try { v = (root as any)[key]; } catch { continue; }
      if (typeof v === "string" || typeof v === "number") {
        values.push(`${name}.${String(key)}=${short(v)}`);
      }
      else if (v && typeof v === "object") {
        for (const k of Object.keys(v)) {
          try {
            const w = v[k];
            if (typeof w === "string" || typeof w === "number") {
              values.push(`${String(key)}.${k}=${w}`);
            }
          } catch { /* a refusing getter */ }
        }
      }
    }
  }
  out.values = values;
  return out;
}
"""


async def test_a_typescript_tool_sees_no_host_detail(dk: Kernel, deno: DenoSandbox,
                                                     tmp_path: Path, served: Served) -> None:
    pid = agent(dk)
    got = await run_tool(dk, pid, TS_PROBE, lang="ts")
    for name, what in (("execPath", "Deno.execPath()"), ("cwd", "Deno.cwd()"),
                       ("pid", "Deno.pid"), ("ppid", "Deno.ppid")):
        assert got[name]["code"] == "NOT_CAPABLE", (name, got[name])
        assert got[name]["message"] == f"{what} is not available to a libos tool"
    assert got["mainModule"] == got["args"] == {"value": "undefined"}
    # Neither can be put back: Deno's namespace and Error are frozen before tool code runs.
    assert got["replaced"]["code"] in ("TypeError", "NOT_CAPABLE")
    assert f"libos:{deno.runtime.name}" in got["stack"] and "libos:" in got["syscallStack"]
    assert_no_host_detail(got, host_paths(tmp_path, deno), host_pids(served))
    assert got["virtualCwd"] == "/"


# -- Python --------------------------------------------------------------------------------------

PY_PROBE = """
import js, os, sys, sysconfig, traceback

def attempt(f):
    try:
        return {"value": repr(f())}
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}

def run(args, libos):
    out = {name: attempt(f) for name, f in {
        "js.Deno.execPath": lambda: js.Deno.execPath(), "js.Deno.cwd": lambda: js.Deno.cwd(),
        "js.Deno.pid": lambda: js.Deno.pid, "js.Deno.ppid": lambda: js.Deno.ppid,
        "js.Deno.mainModule": lambda: js.Deno.mainModule, "js.Deno.args": lambda: js.Deno.args,
        "os.getcwd": os.getcwd, "os.getpid": os.getpid, "os.getppid": os.getppid,
        "sys.executable": lambda: sys.executable,
        "sys._base_executable": lambda: sys._base_executable,
        "sys.orig_argv": lambda: sys.orig_argv, "sys.argv": lambda: sys.argv,
        "sys.path": lambda: sys.path, "sys.prefix": lambda: sys.prefix,
        "os.environ": lambda: dict(os.environ), "os.uname": os.uname,
        "sysconfig": sysconfig.get_config_vars, "module files": lambda: sorted(
            str(getattr(m, "__file__", "")) for m in list(sys.modules.values())),
        "js stack": lambda: js.Error.new("here").stack, "traceback": traceback.format_stack,
    }.items()}
    out["virtual cwd"] = libos.fs.cwd()
    return out
"""


async def test_a_python_tool_sees_no_host_detail(pyodide: PyodideSandbox, tmp_path: Path,
                                                 served: Served) -> None:
    async with kernel_over(tmp_path, pyodide, SLOW_OK) as pk:  # sysconfig loads slowly
        pid = agent(pk)
        got = await run_tool(pk, pid, PY_PROBE, lang="python")
    for name in ("js.Deno.execPath", "js.Deno.cwd", "js.Deno.pid", "js.Deno.ppid"):
        assert got[name]["error"] == "JsException", (name, got[name])
        assert "NotCapable" in got[name]["message"] and "not available" in got[name]["message"]
    assert got["js.Deno.mainModule"]["error"] == got["js.Deno.args"]["error"] == "AttributeError"
    # Python's own view is Pyodide's virtual machine.
    assert got["sys.executable"]["value"] == got["sys._base_executable"]["value"] == (
        "'/usr/bin/python3'")
    assert got["os.getcwd"]["value"] == "'/home/pyodide'"
    assert "libos:pyodide.asm.mjs" in got["js stack"]["value"]
    assert_no_host_detail(got, host_paths(tmp_path, pyodide), host_pids(served))
    assert got["virtual cwd"] == "/"


# -- WebAssembly ---------------------------------------------------------------------------------

@pytest.fixture
async def wk(db_path: Path, tmp_path: Path) -> AsyncIterator[Kernel]:
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")]) as k:
        yield k


EMPTY_ARGS = "(call $mp_map (i32.const 0))"
PASS_ARGS = "(call $r_begin (local.get $args) (local.get $len)) (call $mp_copy)"


async def test_a_wasm_tool_has_nothing_to_ask_but_the_syscalls(wk: Kernel,
                                                               tmp_path: Path) -> None:
    """A guest's only imports are the libos host functions (no WASI): what it learns of its
    process comes from syscalls, whose answers and errors speak of the virtual tree."""
    pid = await start(wk)
    register = partial(register_wat, wk, pid)
    await register("self_wat", syscall_tool("proc.self", EMPTY_ARGS))
    await register("cwd_wat", syscall_tool("fs.cwd", EMPTY_ARGS))
    await register("read_wat", syscall_tool("fs.read", PASS_ARGS))
    me = await wk.call_tool(pid, "self_wat", {})
    assert me["pid"] == pid and me["root"] == "/" and me["cwd"] == "/"
    seen: list[Any] = [me, await wk.call_tool(pid, "cwd_wat", {})]
    for path, error in (("/data", InvalidArgument), ("/data/missing", NotFound),
                        ("/../etc/passwd", NotCapable)):
        with pytest.raises(error) as caught:
            await wk.call_tool(pid, "read_wat", {"path": path})
        seen.append(caught.value.message)
    assert_no_host_detail(seen, host_paths(tmp_path), host_pids())
    assert seen[1] == "/"
