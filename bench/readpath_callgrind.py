"""Instructions per warm kernel call, kernel-only, under callgrind: repeatable on a loaded
machine, unlike time. Only the measured loop is counted (`--dump-before=getppid` splits the
profile at the two marks around it). The calls measured:

* `read`: an audited `fs.read` through the dispatcher (`run_now`);
* `tool`: `call_tool("read_file")`, a builtin tool making that read;
* `now`: `call_tool("now")`, a builtin tool making one `clock.now`;
* `wasm`: `call_tool` of a WASM tool making no syscall (`bench.wasm_bench.LOOP_TOOL`, n=0);
* `ts`: `call_tool` of a TypeScript tool making no syscall (`bench.deno_bench.NOOP`), warm;
* `ts_driver`: the same tool called through the Deno driver alone (`DenoSandbox.call`, a
  minimal host): what `ts` costs beyond it is the kernel's;
* `ts_register`: a new process's `register_tool` of a TypeScript tool and its first call,
  with a warm spare (the report's `register.ts`): each step marked alone, the spare's
  restart and the spawn between steps not counted. The Deno side is not counted anywhere
  (valgrind follows no child): this is the kernel's and the driver's Python.
* `py_register`: the same as `ts_register` for a Python tool (the report's `register.python`),
  its check and first call in a Pyodide spare: the kernel's and the driver's Python alone,
  as for `ts_register` (the Deno process's CPU is measured apart: `bench/pyodide_register.py`).
* `wat_register`: `register_tool` of a new WAT tool (`bench.report.measure._wat_tool`) and its
  first call (the report's `register.wat`): assembling, the linked form's compile by
  Cranelift and the kernel's part, all in this process; the whole module's compile, which
  starts in the background after the first call, runs between steps instead (`cache.flush`
  in the untimed setup), not counted.

    python -m bench.readpath_callgrind            # every figure, this tree
    python -m bench.readpath_callgrind read now   # some of them
    python -m bench.readpath_callgrind --loop read 300   # the loop alone (what valgrind runs)
    python -m bench.readpath_callgrind --quiet wasm ts   # the kernel's timers slowed (below)

Mind the kernel's timers too: signing the chain's head and flushing events every 50 ms,
polling controls and approvals every 0.2 / 0.15 s. Under valgrind a call takes some 50 times
its native time, so they wake far more often per call than natively, and more still when the
machine is loaded: `ts` (a call that waits for Deno, which valgrind does not slow) measured
605k instructions per call on one run and 774k on a later, more loaded one, of code that
makes fewer. `--quiet` slows those timers to once an hour in the measured process, for figures
that depend on the code alone (natively each wakes at most 20 times a second, whatever the
call rate, so a busy broker's calls share them).

Mind what the fs share of `read` and `tool` is: valgrind 3.19 knows no openat2 (it answers
ENOSYS), so under it the rooted provider takes its fallback, the component walk (an lstat
per component, then an openat per directory), not the one openat2 per look a Linux host
uses. The figures printed say which way was measured (`fs_way`); a change to the openat2
path shows in an A/B of time, not here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bench.callgrind import instructions as profiled
from bench.kernel_bench import CONTENT
from broker import AgentImage, Kernel

WARM = 200
MODES = ("read", "tool", "now", "wasm", "ts", "ts_driver", "ts_register", "py_register",
         "wat_register")
# Untimed work before each step of a mode that needs some (a new process, a warm spare).
Setup = Callable[[], Awaitable[None]] | None


async def _calls(kernel: Kernel, mode: str, sandboxes: list[Any]
                 ) -> tuple[Callable[[], Awaitable[Any] | Any], Setup]:
    """The call `mode` measures, in a kernel set up for it (warmed by the caller), and what
    runs untimed before each call, if anything."""
    await kernel.register_image(AgentImage(
        "bench", tools=("read_file", "now", "register_tool"),
        needs=("fs:/data/**:read", "clock:*:read", "tool:*:register,call")))
    pid = kernel.spawn("bench", caps=["fs:/data/**:read", "clock:*:read", "tool:wasm:register",
                                      "tool:ts:register", "tool:wat:register"])
    host_file = Path(kernel.fs.root, "data", "small.txt")  # type: ignore[attr-defined]
    host_file.parent.mkdir()
    host_file.write_text(CONTENT)
    proc, args = kernel.process(pid), {"path": "/data/small.txt"}
    if mode == "read":
        run_now = kernel.dispatcher.run_now
        return lambda: run_now(proc, None, "fs.read", args), None
    if mode == "tool":
        return lambda: kernel.call_tool(pid, "read_file", args), None
    if mode == "now":
        return lambda: kernel.call_tool(pid, "now", {}), None
    if mode == "wasm":
        import wasmtime

        from bench.wasm_bench import LOOP_TOOL
        await kernel.call_tool(pid, "register_tool", {
            "name": "noop", "lang": "wasm", "source": bytes(wasmtime.wat2wasm(LOOP_TOOL))})
        return lambda: kernel.call_tool(pid, "noop", {"n": 0}), None
    if mode == "ts":
        from bench.deno_bench import NOOP
        await kernel.call_tool(pid, "register_tool", {"name": "noop", "lang": "ts",
                                                      "source": NOOP})
        return lambda: kernel.call_tool(pid, "noop", {}), None
    if mode == "ts_driver":
        from bench.deno_bench import NOOP
        from sandboxes.base import CallLimits, ToolCode
        from sandboxes.testing import NullHost
        code, host = ToolCode("noop", "ts", NOOP.encode(), "h-noop"), NullHost(
            1.0, tool="bench", authority="bench/-")
        return lambda: sandboxes[0].call(code, {}, host, CallLimits()), None
    if mode == "ts_register":
        return _register(kernel, sandboxes[0], "ts",
                         lambda i: f"export default async function run() {{ return {i}; }}")
    if mode == "py_register":
        return _register(kernel, sandboxes[0], "python",
                         lambda i: f"def run(args, libos):\n    return {i}\n")
    if mode == "wat_register":
        return _wat_register(kernel, sandboxes[0], pid)
    raise ValueError(f"no such mode {mode!r}: one of {MODES}")


def _register(kernel: Kernel, deno: Any, lang: str, source: Callable[[int], str]
              ) -> tuple[Callable[[], Awaitable[Any]], Setup]:
    """A new process (so a new authority: the spare is adopted) registers a tool and calls
    it, as the report's `register.ts` / `register.python` do; the spare is started again
    between steps."""
    from bench.report.measure import SPARE_SETTLE

    count, who = iter(range(1 << 30)), [0]

    async def setup() -> None:
        await deno.warm()
        await trio.sleep(SPARE_SETTLE)
        who[0] = kernel.spawn("bench", caps=[f"tool:{lang}:register"])

    async def step() -> None:
        i = next(count)
        await kernel.call_tool(who[0], "register_tool", {
            "name": f"jit{i}", "lang": lang, "source": source(i)})
        await kernel.call_tool(who[0], f"jit{i}", {})
    return step, setup


def quiet_timers() -> None:
    """The kernel's periodic tasks (see the module's note) slowed to once an hour."""
    from broker.kernel import anchoring, approvals, controls, events

    anchoring.SIGN_INTERVAL = events.FLUSH_INTERVAL = 3600.0
    controls.CONTROL_POLL = approvals.POLL_SECONDS = 3600.0


def _wat_register(kernel: Kernel, wasm: Any, pid: int
                  ) -> tuple[Callable[[], Awaitable[Any]], Setup]:
    """A new WAT tool registered and called, as the report's `register.wat` does."""
    from bench.report.measure import _wat_tool

    count = iter(range(1 << 30))
    wasm.cache.called = lambda entry: None  # (its thread would run inside the marks)

    async def setup() -> None:  # the previous tool's whole module, compiled and written
        await trio.to_thread.run_sync(wasm.cache.flush)

    async def step() -> None:
        i = next(count)
        await kernel.call_tool(pid, "register_tool", {"name": f"jit{i}", "lang": "wat",
                                                      "source": _wat_tool(i)})
        await kernel.call_tool(pid, f"jit{i}", {})
    return step, setup


async def loop(mode: str, n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="libos-cg-") as tmp:
        sandboxes: list[Any] = []
        if mode in ("wasm", "wat_register"):
            from sandboxes.wasm import WasmSandbox
            # A long inline slice: under valgrind an attempt takes ~1.5 ms of the 2 ms one, so
            # on a loaded machine some overran and ran again on a thread (counts moved 3%).
            sandboxes.append(WasmSandbox(Path(tmp) / "wasm-cache", inline_seconds=10.0))
        if mode.startswith("ts"):
            from sandboxes.deno import DenoSandbox
            sandboxes.append(DenoSandbox(spares=1))
        if mode.startswith("py"):
            from sandboxes.pyodide import PyodideSandbox
            sandboxes.append(PyodideSandbox(spares=1))
        async with Kernel.open(Path(tmp) / "k.db", sandboxes=sandboxes) as kernel:
            call, setup = await _calls(kernel, mode, sandboxes)
            awaits = mode != "read"
            for _ in range(WARM if setup is None else 2):
                if setup is not None:
                    await setup()
                done = call()
                if awaits:
                    await done  # type: ignore[misc]
            if setup is not None:
                for _ in range(n):
                    await setup()
                    os.getppid()  # the marks around each step
                    await call()  # type: ignore[misc]
                    os.getppid()
                return
            os.getppid()  # the mark before the loop
            if awaits:
                for _ in range(n):
                    await call()  # type: ignore[misc]
            else:
                for _ in range(n):
                    call()
            os.getppid()  # and after it


def fs_way() -> str:
    """How the rooted provider opens paths under valgrind (see the module's note)."""
    probe = "from broker.providers import beneath; print(beneath.usable())"
    found = subprocess.run(["valgrind", "--tool=none", "-q", sys.executable, "-c", probe],
                           capture_output=True, text=True, check=False)
    if found.stdout.strip() == "True":
        return "openat2"
    return "component walk (no openat2 under this valgrind)"


def instructions(mode: str, n: int = 300, quiet: bool = False) -> int:
    """Instructions per call of the loop alone (`quiet`: the kernel's timers slowed)."""
    return profiled("bench.readpath_callgrind",
                    ["--loop", mode, str(n), *(["--quiet"] if quiet else [])], per=n)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--loop"]:
        if sys.argv[4:5] == ["--quiet"]:
            quiet_timers()
        trio.run(loop, sys.argv[2], int(sys.argv[3]))
    else:
        quiet = sys.argv[1:2] == ["--quiet"]
        modes = sys.argv[2 if quiet else 1:] or MODES
        print(f"(fs paths opened by: {fs_way()}; kernel timers {'slowed' if quiet else 'as set'})")
        for mode in modes:
            print(f"{mode:11} {instructions(mode, quiet=quiet):>11,} instructions per call")
