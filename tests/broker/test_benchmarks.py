"""`libos bench` runs the benchmarks in a child process, from wherever it is called; a libos
that carries none gets a typed error, not a traceback. (An installed wheel running its own
copy: tests/test_packaging.py.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker import benchmarks
from tests.conftest import bare_env

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_in_a_child_from_the_checkout(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: the child finds it on its own
    assert benchmarks.find().root == ROOT
    # A suite that does not exist: the child starts, finds `bench`, names its suites, and
    # refuses before running anything or writing. (A real suite writes into the caller's
    # directory: tests/broker/test_cli_progress.py.)
    assert benchmarks.run(Path("out.json"), only=["no_such_suite"]) == 2
    assert "no suite no_such_suite; the suites are kernel_bench" in capfd.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_bench_exit_status_is_the_childs(tmp_path: Path,
                                        capfd: pytest.CaptureFixture[str]) -> None:
    # A --json-out that cannot be written: the child fails before it measures anything, and
    # so does `run`.
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert benchmarks.run(blocked / "out.json", only=["inert_bench"]) == 1
    assert "cannot write the results to" in capfd.readouterr().err


def test_bench_report_into_a_directory_it_cannot_make_fails_first(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert benchmarks.report(blocked / "report", sections=["durability"]) == 1
    assert "cannot write the report to" in capfd.readouterr().err
    assert blocked.read_text() == ""


def test_bench_without_the_suites_is_a_typed_error(tmp_path: Path) -> None:
    """The packages without the suites a wheel maps into them (no bench/, no pyproject.toml
    beside them, no broker/_assets/bench)."""
    site = tmp_path / "site"
    for package in ("broker", "sandboxes"):
        shutil.copytree(ROOT / package, site / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys, broker.cli; assert broker.cli.__file__.startswith(sys.argv[1]); "
            "sys.exit(broker.cli.main(['bench']))")
    run = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path,
                         env=bare_env(PYTHONPATH=str(site)),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("NOT_FOUND: the benchmarks are not installed with this libos")
    assert "Traceback" not in run.stderr


def test_bench_report_refuses_an_unknown_section_before_measuring(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert benchmarks.report(tmp_path / "report", sections=["durability", "nosuch"]) == 2
    err = capfd.readouterr().err
    assert "no section nosuch; the sections are memory, ts, wasm" in err
    assert "Traceback" not in err
    assert not (tmp_path / "report" / "report.json").exists()
