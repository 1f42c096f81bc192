"""`python -m bench` (or `libos bench`): measure and write the report (`bench/report/`): a
table of every figure beside its same-run baseline, its peers and its goal, with plots, into
`--out-dir` (`--quick`: under a minute).

`--suites` runs every detailed suite instead (`--only SUITE` some), printing a table per suite
and writing their JSON. Each suite's `run()` returns a flat dict of figures measured beside its
baselines in the same run; only ratios against those baselines mean much on a shared, noisy
machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
SUITES = ("kernel_bench", "protocol_bench", "recovery_bench", "audit_bench", "shell_env_bench",
          "schema_bench", "inert_bench", "deno_bench", "wasm_bench", "pyodide_bench",
          "flood_bench", "approval_bench", "host_tool_bench", "label_bench",
          "embed_bench", "smolagents_bench", "brokers_bench", "mcp_client_bench")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true",
                        help="the report with fewer rounds and no 10,000-process figures")
    parser.add_argument("--out-dir", default=str(RESULTS / "report"),
                        help="where the report goes (made if missing)")
    parser.add_argument("--section", action="append",
                        help="measure only these sections of the report")
    parser.add_argument("--suites", action="store_true",
                        help="run every detailed suite instead of the report")
    parser.add_argument("--only", action="append", help="run only these suites")
    parser.add_argument("--json-out", default=str(RESULTS / "latest.json"))
    args = parser.parse_args(argv)
    if not (args.suites or args.only):
        return _report(Path(args.out_dir), args.quick, args.section or ())
    console = Console()
    # Progress, on a terminal only: a line as each suite starts (a pipe gets the results).
    progress = Console(stderr=True, highlight=False)
    suites = args.only or SUITES
    unknown = [s for s in suites if not (Path(__file__).parent / f"{s}.py").is_file()]
    if unknown:
        progress.print(f"no suite {', '.join(unknown)}; the suites are {', '.join(SUITES)}",
                       markup=False)
        return 2
    out = Path(args.json_out)
    try:  # before any suite runs: an hour of measuring is not lost to a path it cannot write
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(f"{out.parent} is not writable")
    except OSError as exc:
        progress.print(f"cannot write the results to {out}: {exc}", markup=False)
        return 1
    results: dict[str, Any] = {"machine": platform.platform(), "python": platform.python_version(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    for n, suite in enumerate(suites, 1):
        if progress.is_terminal:
            progress.print(f"[{n}/{len(suites)}] {suite} …", markup=False)
        try:
            module = importlib.import_module(f"bench.{suite}")
        except ModuleNotFoundError as exc:  # a dependency it needs is not installed
            progress.print(f"{suite} skipped: {exc}", markup=False)
            continue
        with console.status(f"running {suite}"):
            figures = module.run()
        results[suite] = figures
        table = Table("figure", "value", title=suite)
        for key, value in _flatten(figures):
            table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value))
        console.print(table)
    out.write_text(json.dumps(results, indent=2))
    console.print(f"results written to {out}")
    return 0


def _report(out_dir: Path, quick: bool, sections: Sequence[str]) -> int:
    from bench.report.measure import FULL, QUICK, SECTIONS
    from bench.report.run import run, summary

    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        print(f"no section {', '.join(unknown)}; the sections are {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    try:  # before measuring: minutes of it are not lost to a directory it cannot write
        out_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(out_dir, os.W_OK):
            raise PermissionError(f"{out_dir} is not writable")
    except OSError as exc:
        print(f"cannot write the report to {out_dir}: {exc}", file=sys.stderr)
        return 1
    print(summary(run(out_dir, QUICK if quick else FULL, sections)), end="")
    return 0


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        rows: list[tuple[str, Any]] = []
        for key, inner in value.items():
            rows.extend(_flatten(inner, f"{prefix}{key}." if isinstance(inner, dict)
                                 else f"{prefix}{key}"))
        return rows
    return [(prefix, value)]


if __name__ == "__main__":
    status = 130  # stopped by Ctrl-C (which may reach us inside a trio run's exception group)
    try:
        status = main()
    except* KeyboardInterrupt:
        pass
    raise SystemExit(status)
