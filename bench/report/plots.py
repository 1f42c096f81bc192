"""The report's pictures (matplotlib, from the `bench` extra, imported when drawing):

- `latency.png`: a warm call per sandbox kind, through the kernel and the driver alone,
  against its raw floor and its peers (log scale);
- `durability.png`: one audited syscall at each durability setting of the store;
- `scheduler.png`: scheduler steps per second against the number of processes, with the goals.

Each draws what the run measured and leaves out what it did not; a plot with nothing to draw
is not written. Returns the names of the files written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

KERNEL, DRIVER = "libos, through the kernel", "libos driver alone"
KINDS = {  # sandbox kind → (label, figure) bars, libos first
    "TypeScript": ((KERNEL, "ts.kernel"), (DRIVER, "ts.driver"),
                   ("raw Deno", "ts.raw_deno"), ("denobox", "ts.denobox")),
    "WASM": ((KERNEL, "wasm.kernel"), (DRIVER, "wasm.driver"),
             ("raw wasmtime-py", "wasm.raw_wasmtime"), ("Extism fresh", "wasm.extism_fresh"),
             ("Extism warm", "wasm.extism_warm"), ("denobox", "wasm.denobox")),
    "Python": ((KERNEL, "python.kernel"), (DRIVER, "python.driver"),
               ("raw Pyodide", "python.raw_pyodide"),
               ("smolagents local", "python.smolagents_local")),
}
COLOURS = {KERNEL: "#1f6fb4", DRIVER: "#6fa8dc"}  # libos; floors grey, peers orange
FLOOR = "#999999"
PEER = "#e69138"
DURABILITY = ("off", "normal", "full")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    return plt


def draw(figures: Mapping[str, float], out_dir: Path) -> list[str]:
    plt = _pyplot()
    written = []
    for name, plot in (("latency.png", _latency), ("durability.png", _durability),
                       ("scheduler.png", _scheduler)):
        fig = plot(plt, figures)
        if fig is not None:
            fig.savefig(out_dir / name, dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(name)
    return written


def _colour(label: str) -> str:
    if label in COLOURS:
        return COLOURS[label]
    return FLOOR if label.startswith("raw") else PEER


def _latency(plt: Any, figures: Mapping[str, float]) -> Any:
    kinds = {kind: [(label, figures[key]) for label, key in bars if key in figures]
             for kind, bars in KINDS.items()}
    kinds = {kind: bars for kind, bars in kinds.items() if bars}
    if not kinds:
        return None
    fig, axes = plt.subplots(len(kinds), 1, figsize=(8, 1.2 + 0.45 * sum(map(len,
                                                                             kinds.values()))),
                             squeeze=False)
    for ax, (kind, bars) in zip(axes[:, 0], kinds.items(), strict=True):
        labels = [label for label, _ in bars]
        values = [value for _, value in bars]
        ax.barh(labels, values, color=[_colour(label) for label in labels])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(f"warm {kind} call", loc="left", fontsize=10)
        for y, value in enumerate(values):
            ax.annotate(f" {value:,.0f} µs", (value, y), va="center", fontsize=8)
        ax.set_xlim(min(values) / 2, max(values) * 4)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
        ax.xaxis.set_minor_formatter(lambda x, _: "")
    axes[-1, 0].set_xlabel("µs per call (median, log scale): blue libos, grey raw floor, "
                           "orange peers")
    fig.tight_layout()
    return fig


def _durability(plt: Any, figures: Mapping[str, float]) -> Any:
    found = [(mode, figures[f"durability.{mode}"]) for mode in DURABILITY
             if f"durability.{mode}" in figures]
    if not found:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    modes = [mode for mode, _ in found]
    values = [value for _, value in found]
    ax.bar(modes, values, color=["#999999", "#1f6fb4", "#cc4125"][:len(found)])
    ax.set_yscale("log")
    ax.set_ylim(min(values) / 3, max(values) * 3)
    ax.yaxis.set_major_formatter(lambda y, _: f"{y:,.0f}")
    ax.yaxis.set_minor_formatter(lambda y, _: "")
    ax.set_ylabel("µs per audited syscall (log)")
    ax.set_xlabel("store durability (normal is the default; full: fsync per commit)")
    for x, value in enumerate(values):
        ax.annotate(f"{value:,.0f} µs", (x, value), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    return fig


def _scheduler(plt: Any, figures: Mapping[str, float]) -> Any:
    prefix = "scheduler.steps_per_s_"
    points = sorted((int(key[len(prefix):]), value) for key, value in figures.items()
                    if key.startswith(prefix))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([n for n, _ in points], [v for _, v in points], marker="o", color="#1f6fb4",
            label="libos (this run)")
    ax.scatter([100, 10_000], [15_000, 10_000], marker="_", s=400, color="#cc4125",
               label="goal (#17)")
    ax.set_xscale("log")
    ax.set_xticks(sorted({n for n, _ in points} | {10_000}))
    ax.get_xaxis().set_major_formatter(lambda x, _: f"{x:,.0f}")
    ax.set_xlabel("concurrent processes (log)")
    ax.set_ylabel("scheduler steps per second")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
