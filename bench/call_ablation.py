"""Where a warm kernel call's time goes, found by taking parts of it away: the kernel's own
cost of a warm call, then the same call with one part removed (replaced by a stub after the
warm-up), each in a process of its own, in turns. What a part costs is what its removal
saves. The stubs break the call on purpose (nothing is committed, or hashed): a measuring
tool only, never a run whose records mean anything.

    python -m bench.call_ablation            # every mode, 3 turns
    python -m bench.call_ablation wasm --turns 5
    python -m bench.call_ablation read tool --cpu   # the calling thread's CPU time instead
    python -m bench.call_ablation --round    # in the report's WASM round (below)

`--cpu` times the calling thread's CPU (`time.thread_time`, per call over batches) rather than
wall time: on a loaded machine a wall median moves with the load, the CPU a call takes much
less. (The store's WAL checkpointer, on a thread of its own, is not counted: about 2 µs of
CPU per commit.)

Modes: `wasm`, `Kernel.call_tool` of a WASM tool with its sandbox's `call` replaced by a
stand-in that answers None at once (the kernel alone, no driver); `read`, an audited
`fs.read` through the dispatcher (`run_now`), the read itself included; `tool`,
`call_tool("read_file")`, the builtin tool making that read. Mind that the parts share the
CPU's caches: a part's removal also spares the others the misses it caused (an INSERT's
statement alone measures 17-24 µs in these calls; removing the whole commit saves 27-50).
Parts, each removed
alone from the whole call, except those under `no store` (removed from a call whose audit
records are not made at all):

* `commit`: the INSERT (SQLite, and the Python around it);
* `commit+head`: that, and the anchor's head (its MAC, and the lock file's pwrite);
* `commit+hash`: the INSERT, and the record's hash (`record_hash`);
* `commit+json`: the INSERT, and the detail's JSON (`dump_json`; the hash's text is shorter);
* `no store`: no audit record at all (`append_call`, `append_audit` stubbed);
* `no store, args hash` / `summaries` / `payloads`: the arguments' canonical hash, the
  details' summaries, the payloads packed and hashed, each removed too.

`--round`: each part removed instead from the report's own WASM round
(`bench.report.measure.wasm`: the real driver, and raw wasmtime-py, Extism and denobox
called between the kernel's calls, which leave it cold caches), the removal made once the tool
is registered. It prints the kernel call's median, its gap over the driver alone and its
ratio to an Extism fresh plugin, as the report's row has them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

PARTS = ("whole", "commit", "commit+head", "commit+hash", "commit+json", "no store",
         "no store, args hash", "no store, summaries", "no store, payloads")
WARM, CALLS, REPEATS = 300, 3000, 7


def remove(part: str) -> None:
    """Stub `part` out of this process (after the warm-up: registering needs the store)."""
    import broker.kernel.dispatch as dispatch
    import broker.store.chain as chain

    audit_chain = chain.AuditChain
    if part.startswith("commit"):
        audit_chain._commit_rows = lambda self, rows, head: None  # type: ignore[method-assign]
    if part == "commit+head":
        audit_chain._move_head = lambda self, head: setattr(self, "_head", head)  # type: ignore[method-assign]
    elif part == "commit+hash":
        chain.record_hash = lambda *args: "0" * 64  # type: ignore[assignment]
    elif part == "commit+json":
        chain.dump_json = lambda value: "{}"
    if part.startswith("no store"):
        audit_chain.append_call = lambda self, *args, **options: 1  # type: ignore[method-assign]
        audit_chain.append_audit = lambda self, *args, **options: 1  # type: ignore[method-assign]
    if part == "no store, args hash":
        dispatch.args_hash_sized = lambda args: ("0" * 64, 32)  # type: ignore[assignment]
    elif part == "no store, summaries":
        dispatch.summarize = lambda value: None  # type: ignore[assignment]
    elif part == "no store, payloads":
        dispatch.pack_payload = lambda value, size=None: None  # type: ignore[assignment]


@asynccontextmanager
async def warm_call(mode: str) -> AsyncIterator[tuple[Any, Callable[[], Any], bool]]:
    """A kernel (its timers quieted) and `mode`'s call in it, made `WARM` times (`wasm`: the
    sandbox's `call` replaced by a stand-in that answers None at once); yields the kernel,
    the call, and whether what it returns is awaited."""
    from bench.readpath_callgrind import _calls, quiet_timers
    from broker import Kernel
    from sandboxes.wasm import WasmSandbox

    quiet_timers()
    with tempfile.TemporaryDirectory(prefix="libos-warm-call-") as tmp:
        sandbox = WasmSandbox(Path(tmp) / "wasm-cache", inline_seconds=10.0)
        async with Kernel.open(Path(tmp) / "k.db", sandboxes=[sandbox]) as kernel:
            call, _ = await _calls(kernel, mode, [sandbox])
            if mode == "wasm":
                async def stand_in(*args: Any) -> None:
                    return None
                sandbox.call = stand_in  # type: ignore[method-assign]
            awaits = mode != "read"
            for _ in range(WARM):
                done = call()
                if awaits:
                    await done  # type: ignore[misc]
            yield kernel, call, awaits


async def one(mode: str, part: str, cpu: bool = False) -> float:
    """The median of a warm call's time (µs), the best of `REPEATS` runs, with `part` gone
    (`cpu`: the calling thread's CPU time per call, the median of `REPEATS` batches)."""
    async with warm_call(mode) as (_, call, awaits):
        if part != "whole":
            remove(part)
        if cpu:
            return await _cpu_per_call(call, awaits)
        medians, clock = [], time.perf_counter_ns
        for _ in range(REPEATS):
            taken = []
            for _ in range(CALLS // REPEATS):
                start = clock()
                done = call()
                if awaits:
                    await done  # type: ignore[misc]
                taken.append(clock() - start)
            medians.append(statistics.median(taken))
        return min(medians) / 1000


async def _cpu_per_call(call: Callable[[], Any], awaits: bool) -> float:
    """The calling thread's CPU time per call (µs), the median of `REPEATS` batches (a
    single call is shorter than the clock's resolution is useful)."""
    per_batch, clock = CALLS // REPEATS, time.thread_time_ns
    batches = []
    for _ in range(REPEATS):
        start = clock()
        for _ in range(per_batch):
            done = call()
            if awaits:
                await done  # type: ignore[misc]
        batches.append((clock() - start) / per_batch)
    return statistics.median(batches) / 1000


def in_round(part: str, calls: int) -> dict[str, float]:
    """The report's WASM round (`calls` rounds) with `part` removed from the kernel's call."""
    from dataclasses import replace

    import bench.report.measure as measure
    from bench.report.peers import Peers

    registered = measure._process_with_tools

    async def then_removed(*args: Any, **options: Any) -> int:
        pid = await registered(*args, **options)
        if part != "whole":
            remove(part)
        return pid

    measure._process_with_tools = then_removed  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="libos-round-") as tmp:
        return trio.run(measure.wasm, replace(measure.FULL, calls=calls), Path(tmp), Peers())


def _rounds(turns: int, calls: int) -> None:
    found: dict[str, list[dict[str, float]]] = {part: [] for part in PARTS}
    for _ in range(turns):
        for part in PARTS:
            out = subprocess.run([sys.executable, "-m", "bench.call_ablation", "--one-round",
                                  part, str(calls)], check=True, capture_output=True, text=True)
            found[part].append(json.loads(out.stdout.splitlines()[-1]))
    print(f"the report's WASM round, {calls} rounds, median of {turns} turns "
          "(kernel call, its gap over the driver alone, its ratio to Extism fresh):")
    for part in PARTS:
        runs = found[part]
        kernel = statistics.median(r["kernel"] for r in runs)
        gap = statistics.median(r["kernel"] - r["driver"] for r in runs)
        said = "whole call" if part == "whole" else f"without {part}"
        line = f"  {said:30} {kernel:6.1f} µs  gap {gap:6.1f}"
        if all("extism_fresh" in r for r in runs):  # (a peer not installed is not run)
            ratio = statistics.median(r["kernel"] / r["extism_fresh"] for r in runs)
            line += f"  {ratio:5.2f}x Extism fresh"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modes", nargs="*", default=["wasm", "read", "tool"])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--cpu", action="store_true",
                        help="the calling thread's CPU time per call, not wall time")
    parser.add_argument("--round", action="store_true",
                        help="remove each part from the report's WASM round instead")
    parser.add_argument("--calls", type=int, default=1000, help="rounds, with --round")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "PART"), help=argparse.SUPPRESS)
    parser.add_argument("--one-round", nargs=2, metavar=("PART", "CALLS"),
                        help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        print(trio.run(one, *options.one, options.cpu))
        return
    if options.one_round:
        print(json.dumps(in_round(options.one_round[0], int(options.one_round[1]))))
        return
    if options.round:
        _rounds(options.turns, options.calls)
        return
    for mode in options.modes:
        found: dict[str, list[float]] = {part: [] for part in PARTS}
        for _ in range(options.turns):  # in turns, so a busier minute is shared out
            for part in PARTS:
                out = subprocess.run([sys.executable, "-m", "bench.call_ablation", "--one",
                                      mode, part, *(["--cpu"] if options.cpu else [])],
                                     check=True, capture_output=True, text=True)
                found[part].append(float(out.stdout.split()[-1]))
        whole = statistics.median(found["whole"])
        what = "CPU of the calling thread" if options.cpu else "wall"
        print(f"{mode}: a warm call, {whole:.1f} µs {what} (median of {options.turns} turns)")
        for part in PARTS[1:]:
            left = statistics.median(found[part])
            print(f"  without {part:22} {left:6.1f} µs   (it costs {whole - left:5.1f})")


if __name__ == "__main__":
    main()
