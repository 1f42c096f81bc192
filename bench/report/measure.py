"""The report's measurements, one section at a time, each beside its baselines and peers in
the same run (and, for warm calls, round-robin: load from elsewhere falls on every case
alike). A section returns flat figures named `section.case`; times are µs (medians) unless
the name says otherwise. The pieces come from the suites (`bench/*_bench.py`), which measure
the same things in more detail.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import trio
import wasmtime

from bench.deno_bench import (
    NOOP,
    ONE_SHOT,
    _interleaved,
    _open_raw,
    _raw_call,
    raw_deno,
)
from bench.kernel_bench import CONTENT, scheduler_steps_per_s
from bench.recovery_bench import audited_syscall_by_durability
from bench.report.peers import Peers, noop_wasm, start_denobox
from bench.wasm_bench import LOOP_TOOL, RawWasmtime
from broker import AgentImage, Kernel
from sandboxes import wasm_guest
from sandboxes.base import CallLimits, ToolCode
from sandboxes.deno import DenoSandbox, deno_flags, find_deno
from sandboxes.testing import NullHost
from sandboxes.wasm import WasmSandbox

PY_NOOP = "def run(args, libos):\n    return None\n"
SPARE_SETTLE = 0.5  # seconds a new spare is left idle before a registration is timed
# The floor of registering a TypeScript tool: a raw Deno importing the source as a data: URL
# (what the runtime does with a new tool) and calling it, over the same framing.
RAW_IMPORT = raw_deno("", """\
    const url = "data:application/javascript;base64," + btoa(m.args.src);
    const mod = await import(url);
    write(encodeFrame({ t: "result", id: m.id, value: await mod.default({}, null) }));""")
Case = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class Budget:
    """How much of each measurement a run makes."""

    quick: bool
    calls: int  # rounds of warm calls (each case once a round)
    cold_runs: int
    register_runs: int
    syscalls: int
    scheduler_processes: tuple[int, ...]
    scheduler_steps: int  # steps in all, at each number of processes
    idle_processes: int
    startup_runs: int


QUICK = Budget(quick=True, calls=150, cold_runs=3, register_runs=3, syscalls=600,
               scheduler_processes=(1, 10, 100), scheduler_steps=600, idle_processes=1000,
               startup_runs=1)
FULL = Budget(quick=False, calls=1000, cold_runs=12, register_runs=30, syscalls=5000,
              scheduler_processes=(1, 10, 100, 1000, 10_000), scheduler_steps=20_000,
              idle_processes=100_000, startup_runs=5)


def sync(fn: Callable[[], Any]) -> Case:
    """A blocking peer as a case (it runs on the trio thread: nothing else runs meanwhile)."""
    async def case() -> None:
        fn()
    return case


async def _process_with_tools(kernel: Kernel, lang: str, tools: dict[str, Any],
                              needs: tuple[str, ...] = ()) -> int:
    await kernel.register_image(AgentImage(
        "bench", tools=("register_tool", "read_file"),
        needs=("tool:*:register,call", *needs)))
    pid = kernel.spawn("bench", caps=[f"tool:{lang}:register", *needs])
    for name, source in tools.items():
        await kernel.call_tool(pid, "register_tool", {"name": name, "lang": lang,
                                                      "source": source})
    return pid


def _host() -> tuple[NullHost, CallLimits]:
    return NullHost(1.0, tool="bench", authority="bench/-"), CallLimits()


async def typescript(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    process, raw = await _open_raw(tmp, direct=True)
    try:
        async with DenoSandbox(spares=1) as deno, Kernel.open(tmp / "ts.db",
                                                              sandboxes=[deno]) as kernel:
            await deno.warm()
            pid = await _process_with_tools(kernel, "ts", {"noop": NOOP})
            code, (host, limits) = ToolCode("noop", "ts", NOOP.encode(), "h-noop"), _host()
            cases: dict[str, Case] = {
                "raw_deno": _raw_call(raw, 0),
                "driver": lambda: deno.call(code, {}, host, limits),
                "kernel": lambda: kernel.call_tool(pid, "noop", {}),
            }
            with peers.denobox() as box:
                if box is not None:
                    box.eval("globalThis.noop = () => null")
                    cases["denobox"] = sync(lambda: box.eval("noop()"))
                return await _interleaved(cases, budget.calls)
    finally:
        process.kill()
        await process.wait()


async def wasm(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    """A fresh instance per call everywhere but `extism_warm` and `denobox` (which call into
    an instance they keep)."""
    module = bytes(wasmtime.wat2wasm(LOOP_TOOL))
    raw, packed = RawWasmtime(module), msgpack.packb({"n": 0})
    sandbox = WasmSandbox(tmp / "wasm-cache")
    async with Kernel.open(tmp / "wasm.db", sandboxes=[sandbox]) as kernel:
        pid = await _process_with_tools(kernel, "wasm", {"noop": module})
        code = ToolCode("noop", "wasm", module, hashlib.sha256(module).hexdigest())
        host, limits = _host()
        await sandbox.prepare("noop", "wasm", module)
        cases: dict[str, Case] = {
            "raw_wasmtime": sync(lambda: raw.call(packed)),
            "driver": lambda: sandbox.call(code, {"n": 0}, host, limits),
            "kernel": lambda: kernel.call_tool(pid, "noop", {"n": 0}),
        }
        extism = peers.extism()
        if extism is not None:
            from extism.extism import CompiledPlugin

            compiled = CompiledPlugin(noop_wasm())
            plugin = extism.Plugin(compiled)
            cases["extism_fresh"] = sync(lambda: extism.Plugin(compiled).call("run", b""))
            cases["extism_warm"] = sync(lambda: plugin.call("run", b""))
        with peers.denobox() as box:
            if box is not None:
                loaded = box.load_wasm(wasm_bytes=noop_wasm())
                cases["denobox"] = sync(lambda: loaded.call("run"))
            return await _interleaved(cases, budget.calls)


async def python(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    from bench.pyodide_bench import TIER_UP_CALLS, raw_pyodide_call, start_raw_pyodide
    from sandboxes.pyodide import PyodideSandbox, pyodide_available, pyodide_dir

    if not pyodide_available():
        raise Skipped("Pyodide is not installed: run `libos setup`")
    (tmp / "py-data").mkdir()
    process, raw = await start_raw_pyodide(tmp, pyodide_dir(), tmp / "py-data")
    try:
        async with PyodideSandbox(spares=1) as sandbox, Kernel.open(
                tmp / "py.db", sandboxes=[sandbox]) as kernel:
            await sandbox.warm()
            pid = await _process_with_tools(kernel, "python", {"noop": PY_NOOP})
            code, (host, limits) = ToolCode("noop", "python", PY_NOOP.encode(), "h"), _host()
            cases: dict[str, Case] = {
                "raw_pyodide": raw_pyodide_call(raw, "noop", {}),
                "driver": lambda: sandbox.call(code, {}, host, limits),
                "kernel": lambda: kernel.call_tool(pid, "noop", {}),
            }
            local = peers.smolagents_local()
            if local is not None:
                cases["smolagents_local"] = sync(lambda: local("x"))
            # Past V8's tier-up, for every case alike: it compiles Pyodide's hot wasm in the
            # background through a fresh sandbox's first few hundred calls (DESIGN §9), and
            # a long-lived agent's sandbox spends its life past it.
            return await _interleaved(cases, budget.calls, warmup=TIER_UP_CALLS)
    finally:
        process.kill()
        await process.wait()


async def syscalls(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    """A small file read: directly, as one audited `fs.read` through the dispatcher, and as
    the builtin tool `read_file` through `call_tool`."""
    async with Kernel.open(tmp / "sys.db") as kernel:
        pid = await _process_with_tools(kernel, "ts", {}, needs=("fs:/data/**:read",))
        host_file = Path(kernel.fs.root, "data", "small.txt")  # type: ignore[attr-defined]
        host_file.parent.mkdir()
        host_file.write_text(CONTENT)
        proc, args = kernel.process(pid), {"path": "/data/small.txt"}

        def direct() -> None:
            with open(host_file) as f:
                f.read()

        return await _interleaved({
            "direct_read": sync(direct),
            "audited_read": sync(lambda: kernel.dispatcher.run_now(proc, None, "fs.read",
                                                                   args)),
            "call_tool_read_file": lambda: kernel.call_tool(pid, "read_file", args),
        }, budget.syscalls)


async def durability(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    """One audited `clock.now` at each durability setting of the store."""
    found = await audited_syscall_by_durability(tmp, budget.syscalls)
    return {mode: found[f"audited_syscall_us_{mode}"] for mode in ("off", "normal", "full")}


async def register(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    """`register_tool` of a new tool and its first call, each with a warm spare, beside the
    floors: a raw Deno importing the source as a data: URL and calling it; raw wasmtime-py
    turning the WAT into a module (a new engine) and calling a fresh instance."""
    from sandboxes.pyodide import PyodideSandbox, pyodide_available

    counter = iter(range(1 << 30))
    process, raw = await _open_raw(tmp, direct=True, source=RAW_IMPORT)
    drivers: list[Any] = [DenoSandbox(spares=1), WasmSandbox(tmp / "reg-cache")]
    if pyodide_available():
        drivers.append(PyodideSandbox(spares=1))
    try:
        async with contextlib.AsyncExitStack() as stack:
            for driver in (drivers[0], *drivers[2:]):  # the ones that keep spares
                await stack.enter_async_context(driver)
                await driver.warm()
            kernel = await stack.enter_async_context(Kernel.open(tmp / "reg.db",
                                                                 sandboxes=drivers))
            await kernel.register_image(AgentImage(
                "bench", tools=("register_tool",), needs=("tool:*:register,call",)))
            pid = kernel.spawn("bench", caps=["tool:ts:register", "tool:wat:register",
                                              "tool:python:register"])

            def jit(lang: str, source: Callable[[int], str], *, new_process: bool = False
                    ) -> Case:
                async def case() -> None:
                    i = next(counter)
                    who = pids[lang] if new_process else pid
                    await kernel.call_tool(who, "register_tool", {
                        "name": f"jit{i}", "lang": lang, "source": source(i)})
                    await kernel.call_tool(who, f"jit{i}", {})
                return case

            # "With a warm spare": before each timed round (untimed), the spares are started
            # again and a new process (a new authority, whose tool no sandbox serves yet)
            # registers; "ts_same_authority" is the next tool of a process whose sandbox is
            # already warm (the tool is checked and run there).
            pids: dict[str, int] = {}

            async def setup() -> None:
                for driver in (drivers[0], *drivers[2:]):
                    await driver.warm()
                # A spare a broker keeps has been idle a while: one whose process started
                # just now still has V8 compiling in the background (a Pyodide spare's first
                # request costs 2-3x for about a second), which is not what "warm" means.
                await trio.sleep(SPARE_SETTLE)
                for lang in ("ts", "python"):
                    pids[lang] = kernel.spawn("bench", caps=[f"tool:{lang}:register"])

            async def raw_import() -> None:
                raw.next_id += 1
                src = f"export default async function run() {{ return {next(counter)}; }}"
                await raw.send(_call_frame(raw.next_id, {"src": src}))
                await raw.frame()

            cases: dict[str, Case] = {
                "raw_deno_import": raw_import,
                "ts": jit("ts", lambda i: f"export default async function run() "
                                          f"{{ return {i}; }}", new_process=True),
                "ts_same_authority": jit("ts", lambda i: f"export default async function run() "
                                                         f"{{ return {i}; }}"),
                "raw_wasmtime_compile": sync(lambda: RawWasmtime(bytes(wasmtime.wat2wasm(
                    wasm_guest.expand(_wat_tool(next(counter)))))).call(msgpack.packb({}))),
                "wat": jit("wat", _wat_tool),
            }
            if len(drivers) > 2:
                cases["python"] = jit("python", lambda i: f"def run(args, libos):\n"
                                                          f"    return {i}\n", new_process=True)
            return await _interleaved(cases, budget.register_runs, warmup=1, setup=setup)
    finally:
        process.kill()
        await process.wait()


def _wat_tool(i: int) -> str:
    """A WAT tool as ABI.md says to write one: the prelude marker, then the tool (the raw
    floor compiles it whole, the library spliced in, as wasmtime alone would have to)."""
    return wasm_guest.tool(
        f'(data (i32.const 1024) "{i}")\n'
        '(func (export "run") (param $args i32) (param $len i32) (result i64)\n'
        '  (call $ret_begin) (call $mp_nil) (call $ret_end))')


def _call_frame(call_id: int, args: dict[str, Any]) -> bytes:
    from broker.protocol import encode_frame

    return encode_frame({"t": "call", "id": call_id, "tool": "jit", "args": args})


async def cold(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    """From nothing to the first result of a no-op TypeScript tool: libos (open a store with
    a Deno sandbox, register an image and the tool, spawn, call), its driver alone (start a
    sandbox, call), `deno run` of a file, and the peers' cold starts with a first call. Each
    is timed to its first result: stopping what it started afterwards is not counted."""
    counter = iter(range(1 << 30))
    script = tmp / "oneshot.js"
    script.write_text(ONE_SHOT)
    argv = [find_deno(), *deno_flags(256), str(script)]
    env = {"NO_COLOR": "1", "DENO_DIR": str(tmp / "deno-dir")}
    code, (host, limits) = ToolCode("noop", "ts", NOOP.encode(), "h-noop"), _host()

    async def kernel_ts() -> float:
        start = time.perf_counter()
        async with DenoSandbox() as deno, Kernel.open(tmp / f"cold{next(counter)}.db",
                                                      sandboxes=[deno]) as kernel:
            pid = await _process_with_tools(kernel, "ts", {"noop": NOOP})
            await kernel.call_tool(pid, "noop", {})
            return time.perf_counter() - start
        raise AssertionError("unreachable")

    async def driver_ts() -> float:
        start = time.perf_counter()
        async with DenoSandbox(spares=0) as deno:
            await deno.call(code, {}, host, limits)
            return time.perf_counter() - start
        raise AssertionError("unreachable")

    async def deno_run() -> float:
        start = time.perf_counter()
        await trio.run_process(argv, env=env, cwd=str(tmp), capture_stdout=True)
        return time.perf_counter() - start

    cases: dict[str, Callable[[], Awaitable[float]]] = {
        "deno_run": deno_run, "driver_ts": driver_ts, "kernel_ts": kernel_ts}
    extism = peers.extism()
    if extism is not None:
        module = noop_wasm()

        async def extism_cold() -> float:
            start = time.perf_counter()
            extism.Plugin(module).call("run", b"")
            return time.perf_counter() - start
        cases["extism"] = extism_cold
    if peers.has("denobox"):
        async def denobox_cold() -> float:
            start = time.perf_counter()
            box = start_denobox()
            try:
                box.eval("null")
                return time.perf_counter() - start
            finally:
                box.stop()
        cases["denobox"] = denobox_cold
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(budget.cold_runs + 1):  # the first round warms caches and is dropped
        for name, case in cases.items():
            took = await case()
            if i:
                samples[name].append(took)
    return {name: statistics.median(times) * 1e6 for name, times in samples.items()}


async def scheduler(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    """Scheduler steps per second with 1 to N processes (each a scripted planner calling the
    builtin `now`), a new store for each number."""
    out: dict[str, float] = {}
    for count in budget.scheduler_processes:
        steps = max(2, budget.scheduler_steps // count)
        async with Kernel.open(tmp / f"sched{count}.db") as kernel:
            await kernel.register_image(AgentImage("b", tools=("now",),
                                                   needs=("clock:*:read",)))
            out[f"steps_per_s_{count}"] = await scheduler_steps_per_s(kernel, "b", count, steps)
    return out


async def memory(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    """What an idle process (spawned, no planner: its host drives it) keeps in the broker:
    the Python heap it adds (tracemalloc), and the broker's peak RSS growth, per process."""
    count = budget.idle_processes
    async with Kernel.open(tmp / "mem.db") as kernel:
        await kernel.register_image(AgentImage("idle", tools=("now",),
                                               needs=("clock:*:read",)))
        kernel.spawn("idle", caps=["clock:*:read"])  # warm: the image's first spawn
        gc.collect()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(count):
                kernel.spawn("idle", caps=["clock:*:read"])
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"processes": count, "heap_bytes_per_process": (after - before) / count,
            "peak_rss_bytes_per_process": max(0, rss_after - rss_before) / count}


async def startup(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    """Seconds (medians), each in a new interpreter: bare Python, `import broker`, and
    `libos demo` (to its end).

    As an installed libos starts: with its modules' bytecode compiled (pip compiles it at
    install time), and the Deno cache template of its Pyodide sandbox made (`libos setup`
    makes it). A source checkout gets it from an unmeasured first round, with
    PYTHONDONTWRITEBYTECODE taken out of the children's environment: where that is set (CI,
    some shells), every run compiled the whole broker twice (the demo's two brokers), a
    third of the demo's CPU time, which no user pays."""
    runs: dict[str, list[float]] = {"python": [], "import_broker": [], "demo": []}
    argvs = {"python": [sys.executable, "-c", "pass"],
             "import_broker": [sys.executable, "-c", "import broker"],
             "demo": [sys.executable, "-m", "broker.cli", "demo"]}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["NO_COLOR"] = "1"
    from sandboxes.pyodide import make_runtime_template, pyodide_available, pyodide_dir

    if pyodide_available():  # what `libos setup` leaves (a demo alone never finishes making it)
        await trio.to_thread.run_sync(make_runtime_template, pyodide_dir())
    for argv in argvs.values():  # the warm-up round (bytecode, the page cache)
        await trio.run_process(argv, env=env, cwd=str(tmp), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    for _ in range(budget.startup_runs):
        for name, argv in argvs.items():
            start = time.perf_counter()
            await trio.run_process(argv, env=env, cwd=str(tmp), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            runs[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(times) for name, times in runs.items()}
    # `import broker` itself: the interpreter's own start taken off
    medians["import_broker"] = max(0.0, medians["import_broker"] - medians["python"])
    return medians


async def offline_peers(budget: Budget, tmp: Path, peers: Peers) -> dict[str, float]:
    """No figures: each peer that does not run offline here is tried, and what failed is
    recorded (in a thread: the tries are subprocesses with a timeout)."""
    await trio.to_thread.run_sync(peers.try_unrunnable)
    return {}


class Skipped(Exception):
    """A section that cannot run here (it says why)."""


Section = Callable[[Budget, Path, Peers], Awaitable[dict[str, float]]]
SECTIONS: dict[str, tuple[str, Section]] = {
    # first: its peak-RSS figure is growth over the peak of whatever ran before it
    "memory": ("idle processes", memory),
    "ts": ("warm TypeScript calls", typescript),
    "wasm": ("warm WASM calls", wasm),
    "python": ("warm Python calls", python),
    "syscall": ("audited syscalls", syscalls),
    "durability": ("syscalls by durability", durability),
    "register": ("register + first call", register),
    "cold": ("cold starts", cold),
    "scheduler": ("scheduler steps", scheduler),
    "startup": ("`libos demo` and `import broker`", startup),
    "offline_peers": ("trying the peers that do not run offline", offline_peers),
}
