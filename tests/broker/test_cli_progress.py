"""Long operations show progress on a terminal and stay quiet when piped: `libos setup` (a
status line while it remakes the Pyodide snapshot) and `libos bench` (a line as each suite
starts). Run for real on a pseudo-terminal and through a pipe."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sandboxes.pyodide import PYODIDE_VERSION, STAMP, pyodide_available
from tests.broker.terminal import run_on_terminal, run_piped
from tests.conftest import bare_env
from tests.pyodide_remade import STALE, Remade, stale_copy

LIBOS = [sys.executable, "-m", "broker.cli"]
ENV = bare_env(HOME=os.environ.get("HOME", "/"))


@pytest.mark.skipif(not pyodide_available(), reason="Pyodide is not installed: run `libos setup`")
def test_setup_shows_its_steps_on_a_terminal_and_only_its_result_in_a_pipe(
        tmp_path: Path, remade_pyodide: Remade) -> None:
    piped, piped_dir = remade_pyodide, remade_pyodide.directory  # the run's shared remake
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == f"pyodide {PYODIDE_VERSION}: ready in {piped_dir}\n"
    assert piped.stderr == ""
    shown_dir = stale_copy(tmp_path / "shown")
    status, shown = run_on_terminal([*LIBOS, "setup"],
                                    {**ENV, "LIBOS_PYODIDE_DIR": str(shown_dir)}, timeout=300)
    assert status == 0, shown
    assert "making the memory snapshot again" in shown  # the step, while it ran
    assert f"ready in {shown_dir}" in shown
    for made in (piped_dir, shown_dir):
        assert json.loads((made / STAMP).read_text())["runtime_sha256"] != STALE


def test_bench_says_each_suite_as_it_starts_on_a_terminal_only(tmp_path: Path) -> None:
    # A relative --out is the caller's: the results land here, not in the checkout.
    argv = [*LIBOS, "bench", "--only", "inert_bench", "--out", "b.json"]
    status, shown = run_on_terminal(argv, ENV, cwd=str(tmp_path), timeout=300)
    assert status == 0, shown
    started, table = shown.find("[1/1] inert_bench …"), shown.find("inert_bench\r\n")
    assert 0 <= started < table, shown  # the line came before the suite's results
    assert "inert_bench" in json.loads((tmp_path / "b.json").read_text())
    (tmp_path / "b.json").unlink()
    piped = run_piped(argv, ENV, cwd=str(tmp_path), timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert "inert_bench" in json.loads((tmp_path / "b.json").read_text())
    assert "[1/1]" not in piped.stdout + piped.stderr and "inert_bench" in piped.stdout
    unknown = run_piped([*LIBOS, "bench", "--only", "nosuch_bench"], ENV)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "no suite nosuch_bench; the suites are kernel_bench" in unknown.stderr


def test_bench_report_says_what_it_measures_on_a_terminal_only(tmp_path: Path) -> None:
    argv = [*LIBOS, "bench", "--quick", "--section", "durability", "--out-dir", "shown"]
    status, shown = run_on_terminal(argv, ENV, cwd=str(tmp_path), timeout=300)
    assert status == 0, shown
    assert "[1/1] syscalls by durability …" in shown  # the status line, while it measured
    assert "syscalls by durability: " in shown  # and how long it took, once done
    assert (tmp_path / "shown" / "durability.png").is_file()
    piped = run_piped([*argv[:-1], "piped"], ENV, cwd=str(tmp_path), timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    assert piped.stdout.startswith("| figure | libos | baseline (same run) |")
    assert f"written: {tmp_path / 'piped' / 'report.md'}" in piped.stdout
    result = json.loads((tmp_path / "piped" / "report.json").read_text())
    assert result["mode"] == "quick" and result["figures"]["durability.full"] > 0
