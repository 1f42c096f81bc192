"""The README's benchmark table, produced from a report:
`python -m bench.report.readme [REPORT_JSON] [--readme README.md] [--plots-dir docs/bench]`
replaces the block between the two markers with the report's table (the rows of
`bench/report/rows.py`), the line saying which run it is, and the report's plots (copied
beside the README, into `--plots-dir`). `--check` only says whether the README's block is in
the report's format (a test runs the same check)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import rows, write

START = "<!-- bench-table: made by `python -m bench.report.readme` from a report -->"
END = "<!-- /bench-table -->"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPORT = ROOT / "bench" / "results" / "report" / write.JSON


def block(result: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """The README's block: markers, the run, the table, then the plots (paths from the
    README)."""
    pictures = "".join(f"\n![{write.PLOT_TITLES[Path(p).name]}]({p})\n" for p in plots)
    return (f"{START}\nFrom the {write.describe(result)} ({write.RATIOS}):\n\n"
            f"{rows.table(result['figures'])}{pictures}{END}")


def _split(text: str) -> tuple[str, str, str]:
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"the README needs one `{START}` and, after it, one `{END}`")
    head, rest = text.split(START, 1)
    inside, tail = rest.split(END, 1)
    return head, inside, tail


def replace(text: str, result: dict[str, Any], plots: Sequence[str] = ()) -> str:
    head, _, tail = _split(text)
    return head + block(result, plots) + tail


def check(text: str) -> list[str]:
    """What is wrong with the README's block against the report's format (nothing: [])."""
    try:
        _, inside, _ = _split(text)
    except ValueError as exc:
        return [str(exc)]
    lines = [line for line in inside.splitlines() if line.startswith("|")]
    if len(lines) < 2:
        return ["the block holds no table"]
    problems = []
    expected_header = "| " + " | ".join(rows.HEADER) + " |"
    if lines[0] != expected_header:
        problems.append(f"header {lines[0]!r} is not {expected_header!r}")
    titles = [_cells(line)[0] for line in lines[2:]]
    wanted = [rows.escape(row.title) for row in rows.ROWS]
    if titles != wanted:
        problems.append(f"rows {titles} are not the report's {wanted}")
    problems += [f"row {_cells(line)[0]!r} has {len(_cells(line))} cells, not "
                 f"{len(rows.HEADER)}" for line in lines[2:]
                 if len(_cells(line)) != len(rows.HEADER)]
    return problems


def _cells(line: str) -> list[str]:
    """A table line's cells (an escaped `\\|` stays inside its cell)."""
    inner = line.strip()[1:-1].replace("\\|", "\0")
    return [cell.strip().replace("\0", "\\|") for cell in inner.split("|")]


def _copy_plots(source: Path, names: Sequence[str], target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in names:
        if name in write.PLOT_TITLES:  # only the report's own files, by their own names
            shutil.copyfile(source / name, target / name)
            copied.append(target / name)
    return copied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report.readme")
    parser.add_argument("report", nargs="?", default=str(DEFAULT_REPORT))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--plots-dir", default=str(ROOT / "docs" / "bench"))
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    if args.check:
        problems = check(readme.read_text(encoding="utf-8"))
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    try:
        report = Path(args.report)
        result = json.loads(report.read_text())
        plots = _copy_plots(report.parent, result.get("plots", []), Path(args.plots_dir))
        shown = [os.path.relpath(path, readme.resolve().parent) for path in plots]
        readme.write_text(replace(readme.read_text(encoding="utf-8"), result, shown),
                          encoding="utf-8")
    except (OSError, ValueError, KeyError) as exc:
        print(f"cannot make the README's table from {args.report}: {exc}", file=sys.stderr)
        return 1
    print(f"{readme}: benchmark table from {args.report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
