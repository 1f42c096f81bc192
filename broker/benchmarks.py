"""`libos bench`: find the benchmarks and run them in a child process.

Shipped code never imports `bench` (a test pins it): a child process runs the suites from where
this libos carries them (`broker.assets`: a wheel's copy, or the source checkout), which keeps
their imports and their load out of the CLI. Found nowhere, it is a typed error. The report
goes to `bench/results/report/` in a checkout, the suites' results to
`bench/results/latest.json`; an installed package's directory is not the place for them, so
there they default to the caller's directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.assets import CHECKOUT, find_asset_dir
from broker.errors import NotFound
from broker.store.keys import KEY_ENV

PACKAGE = "bench"  # run as `python -m bench`
INSTALLED_RESULTS = "libos-bench.json"  # in the caller's directory, when not in a checkout
INSTALLED_REPORT = "libos-bench"  # the same, for the report
_STOP_GRACE = 5.0  # seconds a child has to stop after Ctrl-C before it is killed


@dataclass(frozen=True)
class Benchmarks:
    root: Path  # the directory that holds the `bench` package

    def command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", PACKAGE, *args]

    @property
    def in_checkout(self) -> bool:
        return self.root == CHECKOUT


def find() -> Benchmarks:
    found = find_asset_dir(PACKAGE)
    if found is None or not (found / "__main__.py").is_file():
        raise NotFound("the benchmarks are not installed with this libos: a wheel carries "
                       "them in broker/_assets/bench, a source checkout in bench/; reinstall "
                       "libos")
    return Benchmarks(found.parent)


def report(out_dir: Path | None = None, *, quick: bool = False,
           sections: Sequence[str] = ()) -> int:
    """Measure and write the report (every section, or those named) into `out_dir`; returns
    the exit status. A relative `out_dir` is the caller's, not the checkout's."""
    benchmarks = find()
    args = [arg for section in sections for arg in ("--section", section)]
    if quick:
        args.append("--quick")
    if out_dir is None and not benchmarks.in_checkout:
        out_dir = Path(INSTALLED_REPORT)
    if out_dir is not None:
        args += ["--out-dir", str(out_dir.resolve())]
    return _run_child(benchmarks, args)


def run(json_out: Path | None = None, only: Sequence[str] = ()) -> int:
    """Run the detailed suites (all, or those in `only`); returns their exit status. A
    relative `json_out` is the caller's, not the checkout's."""
    benchmarks = find()
    args = ["--suites", *(arg for suite in only for arg in ("--only", suite))]
    if json_out is None and not benchmarks.in_checkout:
        json_out = Path(INSTALLED_RESULTS)
    if json_out is not None:
        args += ["--json-out", str(json_out.resolve())]
    return _run_child(benchmarks, args)


def _run_child(benchmarks: Benchmarks, args: list[str]) -> int:
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(benchmarks.root),
                                                       os.environ.get("PYTHONPATH")]))}
    with contextlib.ExitStack() as owned:
        if not env.get(KEY_ENV):  # (the bench's own key, as `bench` makes one: made here, it
            # is removed however the child ends, killed after Ctrl-C too)
            where = owned.enter_context(tempfile.TemporaryDirectory(prefix="libos-bench-key-"))
            env[KEY_ENV] = os.path.join(where, "audit.key")
        return _wait_for(subprocess.Popen(benchmarks.command(args), cwd=benchmarks.root,
                                          env=env))


def _wait_for(child: subprocess.Popen[bytes]) -> int:
    with child:
        try:
            return _status(child.wait())
        except KeyboardInterrupt:  # the child had the same Ctrl-C: let it stop, then say so
            try:
                child.wait(_STOP_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return 128 + signal.SIGINT


def _status(returncode: int) -> int:
    """A shell's exit status: a child killed by a signal is 128 + its number."""
    return 128 - returncode if returncode < 0 else returncode
