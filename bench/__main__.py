"""`python -m bench` (or `libos bench`): run every benchmark, print a table, write JSON.

Each module's `run()` returns a flat dict of figures measured beside its baselines in the
same run; only ratios against those baselines mean much on a shared, noisy machine.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SUITES = ("kernel_bench", "protocol_bench", "recovery_bench", "audit_bench", "shell_env_bench",
          "schema_bench", "inert_bench", "deno_bench", "wasm_bench", "pyodide_bench",
          "flood_bench", "approval_bench", "host_tool_bench",
          "embed_bench", "smolagents_bench", "mcp_client_bench")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", action="append", help="run only these suites")
    parser.add_argument("--json-out", default=str(Path(__file__).parent / "results" /
                                                  "latest.json"))
    args = parser.parse_args(argv)
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
