"""Measure every section (or some), try the peers that do not run offline, and write the
report. Progress goes to a status line on a terminal (`broker.progress`: nothing when piped);
stdout gets the table and where the files are. A section that fails is reported as failed,
with its error, and the others still run."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from bench.report import measure, rows, write
from bench.report.peers import Peers
from broker.progress import Progress


def _load() -> list[float]:
    try:
        return list(os.getloadavg())
    except OSError:
        return []


async def _sections(budget: measure.Budget, names: Sequence[str], peers: Peers,
                    progress: Progress) -> tuple[dict[str, float], dict[str, Any]]:
    figures: dict[str, float] = {}
    sections: dict[str, Any] = {}
    for n, name in enumerate(names, 1):
        label, section = measure.SECTIONS[name]
        progress.update(f"[{n}/{len(names)}] {label} …")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"libos-bench-{name}-") as tmp:
            try:
                found = await section(budget, Path(tmp), peers)
            except measure.Skipped as exc:
                sections[name] = {"skipped": str(exc)}
                continue
            except Exception as exc:  # reported in the report; the other sections go on
                sections[name] = {"seconds": time.perf_counter() - start,
                                  "failed": f"{type(exc).__name__}: {exc}"}
                continue
        took = time.perf_counter() - start
        sections[name] = {"seconds": round(took, 2)}
        figures.update({f"{name}.{key}": float(value) for key, value in found.items()})
        if progress.shown:
            progress.console.print(f"{label}: {took:.1f} s", markup=False, highlight=False)
    return figures, sections


def run(out_dir: Path, budget: measure.Budget, sections: Sequence[str] = ()) -> list[Path]:
    """Measure (every section, or those named), write the report into `out_dir`; returns the
    files written."""
    quick = budget.quick
    names = list(sections) or list(measure.SECTIONS)
    peers = Peers()
    result: dict[str, Any] = {
        "mode": "quick" if quick else "full",
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.platform(terse=True), "python": platform.python_version(),
        "cpus": os.cpu_count(), "load_average": _load()}
    with Progress() as progress:
        figures, done = trio.run(_sections, budget, names, peers, progress)
        progress.update("writing the report …")
        result.update(figures=figures, sections=done, load_average_end=_load(),
                      peers={"ran": sorted(peers.ran), "not_run": peers.skipped})
        return write.write(result, out_dir)


def summary(files: list[Path]) -> str:
    """What stdout gets: the table, then the files."""
    import json

    result = json.loads(files[1].read_text())
    return (rows.table(result["figures"]) + "\n" +
            "\n".join(f"written: {path}" for path in files) + "\n")
