# ruff: noqa: RUF001 -- ratios are written with the multiplication sign, as in the README
"""The report's table: each figure of issue #17's goals beside its same-run baseline, the ratio
to it, the peers measured in the same run, and whether the goal is met. One definition serves
the report and the README's table (`bench/report/readme.py`).

Figures are looked up by the names the sections give them (`bench/report/measure.py`): a
figure not measured in this run (a section skipped or failed, a peer not installed) shows as
"—", and its goal as not judged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

Figures = Mapping[str, float]
HEADER = ("figure", "libos", "baseline (same run)", "× baseline", "peers (same run)", "goal",
          "met")


@dataclass(frozen=True)
class Row:
    title: str
    value: str  # figure name
    unit: str  # "us", "s", "rate", "bytes"
    baseline: tuple[str, str] | None = None  # (label, figure name)
    peers: tuple[tuple[str, str], ...] = ()  # (label, figure name)
    goal: str = ""
    # Whether the goal is met, from the figures; None: not judged (something is missing).
    met: Callable[[Figures], bool | None] | None = None
    at: str | None = None  # a count the value was measured at (figure name), shown beside it


def _get(figures: Figures, *names: str) -> tuple[float, ...] | None:
    values = tuple(figures.get(name) for name in names)
    return None if any(v is None for v in values) else values  # type: ignore[return-value]


def at_most(name: str, bound: float) -> Callable[[Figures], bool | None]:
    return lambda f: None if (v := _get(f, name)) is None else v[0] <= bound


def at_least(name: str, bound: float) -> Callable[[Figures], bool | None]:
    return lambda f: None if (v := _get(f, name)) is None else v[0] >= bound


def ratio_at_most(name: str, base: str, bound: float) -> Callable[[Figures], bool | None]:
    return lambda f: None if (v := _get(f, name, base)) is None else v[0] <= bound * v[1]


def both(*checks: Callable[[Figures], bool | None]) -> Callable[[Figures], bool | None]:
    def check(f: Figures) -> bool | None:
        found = [c(f) for c in checks]
        return None if None in found else all(found)
    return check


def judged_at(count: str, least: float,
              check: Callable[[Figures], bool | None]) -> Callable[[Figures], bool | None]:
    """`check`, judged only when the figure `count` is at least `least` (a goal set at a
    scale: a quick run measures less, and is not judged by it)."""
    return lambda f: None if f.get(count, 0) < least else check(f)


ROWS: tuple[Row, ...] = (
    Row("warm TypeScript call through the kernel", "ts.kernel", "us",
        ("persistent raw Deno round trip", "ts.raw_deno"),
        (("libos driver alone", "ts.driver"), ("denobox eval", "ts.denobox")),
        "≤ 2× raw Deno, faster than denobox",
        both(ratio_at_most("ts.kernel", "ts.raw_deno", 2),
             ratio_at_most("ts.kernel", "ts.denobox", 1))),
    Row("warm WASM call through the kernel (fresh instance)", "wasm.kernel", "us",
        ("raw wasmtime-py, fresh instance", "wasm.raw_wasmtime"),
        (("libos driver alone", "wasm.driver"), ("Extism fresh plugin", "wasm.extism_fresh"),
         ("Extism warm plugin", "wasm.extism_warm"), ("denobox loaded module", "wasm.denobox")),
        "≤ 0.5× Extism fresh plugin", ratio_at_most("wasm.kernel", "wasm.extism_fresh", 0.5)),
    Row("warm Python call through the kernel, past tier-up (3,000 calls)", "python.kernel", "us",
        ("Pyodide in-process in a plain Deno", "python.raw_pyodide"),
        (("libos driver alone", "python.driver"),
         ("smolagents LocalPythonExecutor (no isolation)", "python.smolagents_local")),
        "≤ 0.2 ms", at_most("python.kernel", 200)),
    Row("audited read syscall (`fs.read` through the dispatcher)", "syscall.audited_read",
        "us", ("direct Python read", "syscall.direct_read"), (), "≤ 3× direct read",
        ratio_at_most("syscall.audited_read", "syscall.direct_read", 3)),
    Row('`call_tool("read_file")`', "syscall.call_tool_read_file", "us",
        ("direct Python read", "syscall.direct_read"), (), "≤ 5× direct read",
        ratio_at_most("syscall.call_tool_read_file", "syscall.direct_read", 5)),
    Row("audited syscall, durability normal (the default)", "durability.normal", "us",
        ("durability off", "durability.off"), (("durability full", "durability.full"),)),
    Row("register a TypeScript tool + first call, warm spare", "register.ts", "us",
        ("raw Deno: import a data: URL + call", "register.raw_deno_import"), (), "≤ 3 ms",
        at_most("register.ts", 3000)),
    Row("register a WAT tool + first call", "register.wat", "us",
        ("raw wasmtime-py: new engine, wat2wasm, compile, call",
         "register.raw_wasmtime_compile"), (),
        "≤ 5 ms", at_most("register.wat", 5000)),
    Row("register a Python tool + first call, warm spare", "register.python", "us", None, (),
        "≤ 10 ms", at_most("register.python", 10_000)),
    Row("cold: open, register, first TypeScript call", "cold.kernel_ts", "us",
        ("`deno run` of a file", "cold.deno_run"),
        (("libos driver alone", "cold.driver_ts"), ("denobox start + eval", "cold.denobox"),
         ("Extism plugin from bytes + call", "cold.extism")),
        "≤ 2× denobox cold", ratio_at_most("cold.kernel_ts", "cold.denobox", 2)),
    Row("scheduler steps per second, 100 processes", "scheduler.steps_per_s_100", "rate",
        ("1 process", "scheduler.steps_per_s_1"), (), "≥ 15,000",
        at_least("scheduler.steps_per_s_100", 15_000)),
    Row("scheduler steps per second, 10,000 processes", "scheduler.steps_per_s_10000", "rate",
        ("1 process", "scheduler.steps_per_s_1"), (), "≥ 10,000",
        at_least("scheduler.steps_per_s_10000", 10_000)),
    Row("`libos demo`", "startup.demo", "s", ("bare Python start", "startup.python"), (),
        "< 0.8 s", at_most("startup.demo", 0.8)),
    Row("`import broker`", "startup.import_broker", "s", ("bare Python start", "startup.python"),
        (), "< 0.12 s", at_most("startup.import_broker", 0.12)),
    Row("idle process (Python heap it keeps)", "memory.heap_bytes_per_process", "bytes", None,
        (("peak RSS growth per process", "memory.peak_rss_bytes_per_process"),),
        "≤ 10 KB, at 100,000 idle processes",
        judged_at("memory.processes", 100_000, at_most("memory.heap_bytes_per_process",
                                                        10_000)), at="memory.processes"),
)


def show(value: float | None, unit: str) -> str:
    """A figure as a person reads it."""
    if value is None:
        return "—"
    if unit == "us":
        if value >= 1_000_000:
            return f"{_sig(value / 1e6)} s"
        return f"{_sig(value / 1000)} ms" if value >= 1000 else f"{_sig(value)} µs"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "rate":
        return f"{value:,.0f}/s"
    if unit == "bytes":
        return f"{value / 1000:.1f} KB"
    return f"{value:g}"


def _sig(x: float) -> str:
    """Three significant figures, never in e-notation."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    r = value / base
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def cells(row: Row, figures: Figures) -> tuple[str, ...]:
    value = figures.get(row.value)
    base_label, base = (row.baseline if row.baseline else ("", None))
    base_value = figures.get(base) if base else None
    baseline = f"{base_label} {show(base_value, row.unit)}" if base else "—"
    peers = "; ".join(f"{label} {show(figures[name], row.unit)}"
                      f" ({ratio(value, figures[name])})"
                      for label, name in row.peers if name in figures) or "—"
    met = row.met(figures) if row.met else None
    verdict = "—" if row.met is None else {True: "yes", False: "no", None: "not judged"}[met]
    shown = show(value, row.unit)
    if row.at and row.at in figures and value is not None:
        shown += f" at {figures[row.at]:,.0f}"
    return (row.title, shown, baseline, ratio(value, base_value), peers,
            row.goal or "—", verdict)


def table(figures: Figures) -> str:
    """The markdown table of every row."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for row in ROWS:
        lines.append("| " + " | ".join(escape(c) for c in cells(row, figures)) + " |")
    return "\n".join(lines) + "\n"


def escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")
