"""Label benchmark: what information-flow labels add to a syscall, measured in the same run.

Two processes in one kernel make the same syscalls through the dispatcher's synchronous path
(`run_now`, where a sandbox's cheap syscalls are answered):
  - off: capabilities without labels or bounds, a process with no label, an unlabelled file,
    no label rules;
  - on: a capability that labels what it returns, one whose bound is checked on every call
    (`flows`), a label rule that matches, a labelled file, a process already labelled (so
    each call checks the bound, joins labels and records them, and nothing grows).
Calls alternate off and on, one by one, and each side's median counts, so drift on a shared
machine hits both alike. The
issue's budget is `on_over_off` ≤ 1.10. Beside them, what every `fs.read`/`fs.write` pays
whether labels are used or not: the lookup of a file's labels (`file_labels_lookup_us`).

Run with `python -m bench.label_bench` (or `python -m bench`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench.timing import WARMUP, best_us
from broker import AgentImage, Kernel

RULES = [{"kind": "clock", "scope": "*", "labels": ["timing"]},
         {"kind": "fs", "scope": "/on/**", "labels": ["internal"]}]
OFF_CAPS = ["fs:/off/**:read,write", "clock:*:read"]
ON_CAPS = [
    {"kind": "fs", "scope": "/on/**", "rights": ["read"], "labels": ["secret"]},
    {"kind": "fs", "scope": "/on/**", "rights": ["write"], "flows": {"untrusted": "deny"}},
    {"kind": "clock", "scope": "*", "rights": ["read"], "flows": {"untrusted": "ask"}},
]
CALLS = (("fs.read", {"path": "/{side}/data.txt"}),
         ("fs.write", {"path": "/{side}/out.txt", "data": "x" * 64}),
         ("clock.now", {}))


def _alternate(off: Callable[[], Any], on: Callable[[], Any], n: int) -> tuple[float, float]:
    """Median µs per call of each, the two called in turn (the order swapped every time), so
    whatever else the machine does lands on both alike."""
    for _ in range(WARMUP):
        off()
        on()
    times: dict[str, list[float]] = {"off": [], "on": []}
    clock = time.perf_counter
    for i in range(n):
        for side, fn in ((("off", off), ("on", on)) if i % 2 else (("on", on), ("off", off))):
            start = clock()
            fn()
            times[side].append(clock() - start)
    return statistics.median(times["off"]) * 1e6, statistics.median(times["on"]) * 1e6


async def _measure(root: Path, n_calls: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with Kernel.open(root / "bench.db", fs_root=root / "fs", label_rules=RULES) as kernel:
        for side in ("off", "on"):
            (root / "fs" / side).mkdir(parents=True)
            (root / "fs" / side / "data.txt").write_text("hello " * 100)
        await kernel.register_image(AgentImage("bench", needs=["fs:/**:read,write",
                                                              "clock:*:read"]))
        off = kernel.process(kernel.spawn("bench", caps=OFF_CAPS))
        on = kernel.process(kernel.spawn("bench", caps=ON_CAPS))
        kernel.store.set_file_labels(str(Path("/on/data.txt")), ["secret", "pii"])
        kernel.labels.raise_process(on, frozenset({"secret", "pii", "internal", "timing"}))
        for name, template in CALLS:
            def call(proc: Any, side: str, name: str = name,
                     template: dict[str, Any] = template) -> Callable[[], Any]:
                args = {k: v.format(side=side) if isinstance(v, str) else v
                        for k, v in template.items()}
                return lambda: kernel.dispatcher.run_now(proc, None, name, args)

            off_us, on_us = _alternate(call(off, "off"), call(on, "on"), n_calls)
            out[f"{name}_off_us"] = round(off_us, 1)
            out[f"{name}_on_us"] = round(on_us, 1)
            out[f"{name}_on_over_off"] = round(on_us / off_us, 3)
        assert on.label == {"secret", "pii", "internal", "timing"}  # nothing grew, nothing shrank
        out["file_labels_lookup_us"] = round(best_us(
            lambda: kernel.store.file_labels("/on/data.txt"), n_calls), 1)
        out["worst_on_over_off"] = max(v for k, v in out.items() if k.endswith("_on_over_off"))
    return out


def run(n_calls: int = 2000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="libos-bench-") as tmp:
        started = time.perf_counter()
        figures = trio.run(_measure, Path(tmp), n_calls)
        figures["seconds"] = round(time.perf_counter() - started, 1)
        return figures


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:36} {value}")
