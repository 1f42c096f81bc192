"""Write a run's report into a directory: `report.json` (everything measured, for the README's
table and for later comparison), `report.md` (the table, the peers that did not run and why,
what each section did, the plots) and the plots' PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.report import plots, rows

JSON, MARKDOWN = "report.json", "report.md"
RATIOS = "beside each peer, libos's figure over the peer's"
PLOT_TITLES = {"latency.png": "Warm call per sandbox kind, against its floor and its peers",
               "durability.png": "Audited syscall against the store's durability",
               "scheduler.png": "Scheduler steps per second against the number of processes"}


def describe(result: dict[str, Any]) -> str:
    """One line: when, where, which mode (the same line heads the README's table)."""
    load = result.get("load_average") or []
    loaded = f", load average {load[0]:.1f} at the start" if load else ""
    return (f"{result['mode']} run of {result['started']} on {result['machine']} "
            f"({result['cpus']} CPUs{loaded}), Python {result['python']}")


def markdown(result: dict[str, Any], plotted: list[str]) -> str:
    figures = result["figures"]
    out = ["# libos benchmark report", "",
           describe(result) + ".", "",
           "Every figure stands beside a baseline measured in the same run (warm calls "
           "round-robin, so load from elsewhere falls on each alike); on a shared machine read "
           f"the ratios, not the microseconds; {RATIOS}. Goals: issue #17.", "",
           rows.table(figures)]
    not_run = result["peers"]["not_run"]
    if not_run:
        out += ["## Peers not run", ""]
        out += [f"- **{name}**: {reason}" for name, reason in not_run.items()]
        out.append("")
    out += ["## Sections", "", "| section | time | outcome |", "| --- | --- | --- |"]
    for name, done in result["sections"].items():
        outcome = ("measured" if "seconds" in done and "failed" not in done
                   else done.get("skipped") or done.get("failed", ""))
        took = f"{done['seconds']:.1f} s" if "seconds" in done else "—"
        out.append(f"| {name} | {took} | {rows.escape(outcome)} |")
    out.append("")
    if plotted:
        out += ["## Plots", ""]
        for name in plotted:
            out += [f"### {PLOT_TITLES[name]}", "", f"![{PLOT_TITLES[name]}]({name})", ""]
    out += ["## Every figure", "", "| figure | value |", "| --- | --- |"]
    out += [f"| `{key}` | {value:,.1f} |" for key, value in sorted(figures.items())]
    return "\n".join(out) + "\n"


def write(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the report's files; returns them, the markdown first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plotted = plots.draw(result["figures"], out_dir)
    result = {**result, "plots": plotted}
    (out_dir / JSON).write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / MARKDOWN).write_text(markdown(result, plotted))
    return [out_dir / MARKDOWN, out_dir / JSON, *(out_dir / name for name in plotted)]
