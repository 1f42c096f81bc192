"""`libos bench`'s report, written from real measurements of a small subset (the audited
syscalls, the durability settings, warm WASM calls with their peers, and the peers that do not
run offline, tried offline), and the README's table made from a report. Speed is never
asserted: only that each figure was measured, shown beside its baseline, and drawn."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import readme, rows
from bench.report.measure import QUICK, SECTIONS, Budget
from bench.report.run import run
from tests.conftest import bare_env

ROOT = Path(__file__).resolve().parent.parent
TINY = Budget(quick=True, calls=15, cold_runs=1, register_runs=1, syscalls=40,
              scheduler_processes=(1, 10), scheduler_steps=20, idle_processes=50,
              startup_runs=1)
MEASURED = ("syscall", "durability", "wasm", "scheduler", "memory", "offline_peers")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("report")
    files = run(out, TINY, MEASURED)
    assert files[0] == out / "report.md" and files[1] == out / "report.json"
    return out, json.loads((out / "report.json").read_text())


def _row(markdown: str, title: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {title} |"))
    return readme._cells(line)


def test_the_report_shows_each_measured_figure_beside_its_baseline(report: tuple) -> None:
    out, result = report
    assert set(result["sections"]) == set(MEASURED)
    assert all("failed" not in done for done in result["sections"].values()), result
    figures = result["figures"]
    for name in ("syscall.direct_read", "syscall.audited_read", "syscall.call_tool_read_file",
                 "durability.off", "durability.normal", "durability.full",
                 "wasm.kernel", "wasm.driver", "wasm.raw_wasmtime",
                 "scheduler.steps_per_s_1", "scheduler.steps_per_s_10",
                 "memory.heap_bytes_per_process"):
        assert figures[name] > 0, name
    markdown = (out / "report.md").read_text()
    audited = _row(markdown, rows.escape(rows.ROWS[3].title))
    # the value, the baseline measured in the same run, their ratio, the goal's verdict
    assert audited[1] == rows.show(figures["syscall.audited_read"], "us")
    assert audited[2] == "direct Python read " + rows.show(figures["syscall.direct_read"], "us")
    ratio = figures["syscall.audited_read"] / figures["syscall.direct_read"]
    assert float(audited[3][:-1]) == pytest.approx(ratio, rel=0.05)  # the sign dropped
    assert audited[6] == ("yes" if ratio <= 3 else "no")
    # what this run did not measure is shown as such, never as a number
    cold = _row(markdown, rows.escape(rows.ROWS[9].title))
    assert cold[1] == "—" and cold[6] == "not judged"
    assert "| memory | " in markdown and "| wasm | " in markdown  # each section's outcome


def test_each_peer_either_ran_beside_libos_or_says_why_not(report: tuple) -> None:
    out, result = report
    ran, not_run = result["peers"]["ran"], result["peers"]["not_run"]
    figures = result["figures"]
    for peer, figure in (("Extism", "wasm.extism_fresh"), ("denobox", "wasm.denobox")):
        assert (peer in ran and figures[figure] > 0) or peer in not_run, peer
    # the ones that cannot run offline were tried: the reason is what failed, here
    assert "Unsupported executor type: wasm" in not_run["smolagents Wasm executor"]
    assert "langchain-core<0.4" in not_run["langchain-sandbox"]
    assert "jsr.io/@langchain/pyodide-sandbox" in not_run["langchain-sandbox"]
    if "not installed" not in not_run["mcp-run-python"]:
        assert "jsr.io" in not_run["mcp-run-python"], not_run["mcp-run-python"]
    markdown = (out / "report.md").read_text()
    for name, reason in not_run.items():
        assert f"- **{name}**: {reason}" in markdown


def test_the_plots_are_drawn_from_what_was_measured(report: tuple) -> None:
    out, result = report
    # measured: warm WASM latencies, durability, scheduler; no TypeScript or Python here
    assert result["plots"] == ["latency.png", "durability.png", "scheduler.png"]
    for name in result["plots"]:
        assert (out / name).read_bytes().startswith(PNG)
        assert f"]({name})" in (out / "report.md").read_text()


def test_the_readmes_table_is_in_the_reports_format() -> None:
    assert readme.check((ROOT / "README.md").read_text(encoding="utf-8")) == []


def test_the_readmes_table_is_made_from_a_report(report: tuple, tmp_path: Path) -> None:
    out, result = report
    original = (ROOT / "README.md").read_text(encoding="utf-8")
    target = tmp_path / "README.md"
    target.write_text(original, encoding="utf-8")
    made = subprocess.run([sys.executable, "-m", "bench.report.readme", str(out / "report.json"),
                           "--readme", str(target), "--plots-dir", str(tmp_path / "plots")],
                          cwd=ROOT, env=bare_env(PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    new = target.read_text(encoding="utf-8")
    assert readme.check(new) == []
    # only the block changed, and it now holds this report's figures
    outside = re.compile(re.escape(readme.START) + ".*?" + re.escape(readme.END), re.S)
    assert outside.sub("", new) == outside.sub("", original)
    assert rows.table(result["figures"]) in new
    assert "From the quick run of " in new
    for name in result["plots"]:  # beside the README, and shown in its block
        assert (tmp_path / "plots" / name).read_bytes() == (out / name).read_bytes()
        assert f"](plots/{name})" in new
    # a README whose table is not the report's: the check names what is wrong
    broken = new.replace("| figure | libos |", "| what | libos |")
    assert any("header" in problem for problem in readme.check(broken))
    dropped = new.replace(_line(new, rows.ROWS[0].title), "")
    assert any("rows" in problem for problem in readme.check(dropped))


def _line(text: str, title: str) -> str:
    return next(line + "\n" for line in text.splitlines() if line.startswith(f"| {title} |"))


def test_a_section_that_fails_is_reported_and_the_others_still_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(budget: Budget, tmp: Path, peers: object) -> dict[str, float]:
        raise RuntimeError("the sandbox went away")

    monkeypatch.setitem(SECTIONS, "broken", ("a broken section", broken))
    files = run(tmp_path, TINY, ["broken", "durability"])
    result = json.loads(files[1].read_text())
    assert result["sections"]["broken"]["failed"] == "RuntimeError: the sandbox went away"
    assert result["figures"]["durability.normal"] > 0
    assert "RuntimeError: the sandbox went away" in files[0].read_text()


def test_quick_mode_covers_every_row_but_the_10000_process_ones() -> None:
    """Every row's figure comes from a section that runs in --quick, except those measured
    only in a full run."""
    assert QUICK.scheduler_processes[-1] < 10_000 and QUICK.idle_processes < 100_000
    for row in rows.ROWS:
        assert row.value.split(".")[0] in SECTIONS, row.title
