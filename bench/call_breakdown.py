"""Where a warm sandboxed call's wall time goes in the kernel: perf_counter_ns probes around the
stages of `Kernel.call_tool` (medians over many calls), beside the driver alone.

    python -m bench.call_breakdown ts            # TypeScript, interleaved with the driver alone
    python -m bench.call_breakdown wasm --alone  # the kernel's calls back to back (warm caches)
    python -m bench.call_breakdown python --calls 3000
    python -m bench.call_breakdown wasm --round  # in the report's WASM round, peers and all

By default the kernel's call and the driver's alone take turns, as in the report
(`bench.report.measure`): each runs after the other's code, with the caches it left, which is
what the report's figures are (a commit, say, costs about 3 times as much there as back to
back). Stages, each inclusive (a probe costs about 0.1 µs):

* `prepare`: `Dispatcher._prepare` (the checks, the `tool.call` record made and held);
* `sandbox`: the sandbox's `call` (the driver, and the sandbox's own time);
* `outcome`: `Dispatcher._recorded` (the outcome merged into the held record, chained and
  committed), with `chain row` (its detail's JSON and hash), `commit` (the INSERT) and
  `anchor head` (the head's MAC written to the lock file) inside it, and inside `commit`,
  `statement` (SQLite's own execution of the INSERT: what is left of `commit` is Python's);
* `rest`: the call's median less those of the stages (tool table, invocation, budgets, slots,
  coroutines).

`--round` (WASM): the kernel's calls made in the report's own round instead
(`bench.report.measure.wasm`: raw wasmtime-py, the driver alone, the kernel, Extism fresh and
warm, denobox, each once a round), so each stage is timed with the caches those peers leave
it; `statement` is not probed there, and the round's medians follow the stages.

It also counts the trio task steps the caller takes per call (a wait for the sandbox's reply
is one) and the run loop's waits for I/O.
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

SAMPLES: dict[str, list[int]] = collections.defaultdict(list)
_in_kernel = [False]  # the driver's own calls are not the kernel's stages


def _probe(owner: Any, attr: str, label: str) -> None:
    fn = getattr(owner, attr)
    samples, clock = SAMPLES[label], time.perf_counter_ns
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            if not _in_kernel[0]:
                return await fn(*args, **kwargs)
            start = clock()
            try:
                return await fn(*args, **kwargs)
            finally:
                samples.append(clock() - start)
        setattr(owner, attr, timed_async)
        return

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if not _in_kernel[0]:
            return fn(*args, **kwargs)
        start = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            samples.append(clock() - start)
    setattr(owner, attr, timed)


def install(sandbox_class: type) -> None:
    from broker.kernel.dispatch import Dispatcher
    from broker.kernel.kernel import Kernel
    from broker.store.audit_rows import RowsAtOnce
    from broker.store.chain import AuditChain

    _probe(Dispatcher, "_prepare", "prepare")
    _probe(sandbox_class, "call", "sandbox")
    _probe(Dispatcher, "_recorded", "outcome")
    _probe(AuditChain, "_chain_row", "  chain row")
    _probe(RowsAtOnce, "_insert_at_once", "  commit")
    SAMPLES.setdefault("    statement", [])  # (`probe_statement`'s, once the store is open)
    _probe(AuditChain, "_move_head", "  anchor head")
    call_tool = Kernel.call_tool
    samples, clock = SAMPLES["kernel call"], time.perf_counter_ns

    @functools.wraps(call_tool)
    async def timed(self: Kernel, *args: Any, **kwargs: Any) -> Any:
        _in_kernel[0] = True
        start = clock()
        try:
            return await call_tool(self, *args, **kwargs)
        finally:
            samples.append(clock() - start)
            _in_kernel[0] = False
    Kernel.call_tool = timed  # type: ignore[method-assign]


def probe_statement(store: Any) -> None:
    """Time SQLite's execution of the audit INSERT itself (`RowsAtOnce._appends`, kept per
    store): measured cache-cold in a warm call's commit, it is nearly all of `commit`."""
    execute, samples, clock = store._appends, SAMPLES["    statement"], time.perf_counter_ns

    def timed(*args: Any) -> Any:
        if not _in_kernel[0]:
            return execute(*args)
        start = clock()
        try:
            return execute(*args)
        finally:
            samples.append(clock() - start)
    store._appends = timed


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: collections.Counter[str] = collections.Counter()
        self.io_waits = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1

    def before_io_wait(self, timeout: float) -> None:
        self.io_waits += 1


async def _measure(kernel_call: Callable[[], Any], driver_call: Callable[[], Any], calls: int,
                   alone: bool) -> dict[str, float]:
    driver: list[int] = []
    for _ in range(200):  # warm
        await kernel_call()
        await driver_call()
    for samples in SAMPLES.values():
        samples.clear()
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    me = trio.lowlevel.current_task().name
    try:
        for _ in range(calls):
            await kernel_call()
            if not alone:
                start = time.perf_counter_ns()
                await driver_call()
                driver.append(time.perf_counter_ns() - start)
    finally:
        trio.lowlevel.remove_instrument(steps)
    medians = {label: statistics.median(v) / 1000 for label, v in SAMPLES.items() if v}
    medians["rest"] = medians["kernel call"] - sum(
        medians.get(stage, 0.0) for stage in ("prepare", "sandbox", "outcome"))
    if driver:
        medians["driver alone"] = statistics.median(driver) / 1000
    medians["caller steps per call"] = steps.steps[me] / calls / (1 if alone else 2)
    medians["io waits per call"] = steps.io_waits / calls
    return medians


async def run(kind: str, calls: int, alone: bool) -> dict[str, float]:
    import hashlib

    import wasmtime

    from bench.deno_bench import NOOP
    from bench.report.measure import PY_NOOP, _host, _process_with_tools
    from bench.wasm_bench import LOOP_TOOL
    from broker import Kernel
    from sandboxes.base import ToolCode
    from sandboxes.deno import DenoSandbox
    from sandboxes.pyodide import PyodideSandbox
    from sandboxes.wasm import WasmSandbox

    host, limits = _host()
    with tempfile.TemporaryDirectory(prefix="libos-breakdown-") as tmp_:
        tmp = Path(tmp_)
        if kind == "wasm":
            module = bytes(wasmtime.wat2wasm(LOOP_TOOL))
            wasm = WasmSandbox(tmp / "wasm-cache")
            install(WasmSandbox)
            async with Kernel.open(tmp / "k.db", sandboxes=[wasm]) as kernel:
                probe_statement(kernel.store)
                pid = await _process_with_tools(kernel, "wasm", {"noop": module})
                code = ToolCode("noop", "wasm", module, hashlib.sha256(module).hexdigest())
                return await _measure(lambda: kernel.call_tool(pid, "noop", {"n": 0}),
                                      lambda: wasm.call(code, {"n": 0}, host, limits),
                                      calls, alone)
        made, lang, source = {"ts": (DenoSandbox, "ts", NOOP),
                              "python": (PyodideSandbox, "python", PY_NOOP)}[kind]
        install(made)
        async with made(spares=1) as sandbox, Kernel.open(tmp / "k.db",
                                                          sandboxes=[sandbox]) as kernel:
            await sandbox.warm()
            probe_statement(kernel.store)
            pid = await _process_with_tools(kernel, lang, {"noop": source})
            code = ToolCode("noop", lang, source.encode(), "h-noop")
            return await _measure(lambda: kernel.call_tool(pid, "noop", {}),
                                  lambda: sandbox.call(code, {}, host, limits), calls, alone)


def in_round(calls: int) -> dict[str, float]:
    """The stages' medians over the kernel's calls in the report's WASM round (`calls`
    rounds), then the round's own medians of every case."""
    from dataclasses import replace

    from bench.report.measure import FULL, wasm
    from bench.report.peers import Peers
    from sandboxes.wasm import WasmSandbox

    install(WasmSandbox)
    with tempfile.TemporaryDirectory(prefix="libos-breakdown-") as tmp:
        cases = trio.run(wasm, replace(FULL, calls=calls), Path(tmp), Peers())
    medians = {label: statistics.median(v[-calls:]) / 1000  # (past the round's warm-up)
               for label, v in SAMPLES.items() if v}
    medians["rest"] = medians["kernel call"] - sum(
        medians[stage] for stage in ("prepare", "sandbox", "outcome"))
    return {**medians, **{f"round: {case}": value for case, value in cases.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("ts", "wasm", "python"))
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--alone", action="store_true",
                        help="the kernel's calls back to back, not in turn with the driver's")
    parser.add_argument("--round", action="store_true",
                        help="(wasm) the kernel's calls in the report's round, with its peers")
    args = parser.parse_args()
    if args.round:
        if args.kind != "wasm":
            parser.error("--round is the report's WASM round: `wasm --round`")
        for label, value in in_round(args.calls).items():
            print(f"{label:24} {value:8.2f} µs")
        return
    for label, value in trio.run(run, args.kind, args.calls, args.alone).items():
        unit = "" if label.endswith("per call") else " µs"
        print(f"{label:24} {value:8.2f}{unit}")


if __name__ == "__main__":
    main()
