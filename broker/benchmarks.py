"""`libos bench`: find the benchmarks and run them in a child process.

Shipped code never imports `bench` (a test pins it): the benchmarks are not part of the
installed package, and a child process keeps their imports and their load out of the CLI.
Today they are found in the source checkout this package runs from (an editable install, or
`python -m broker.cli` from the checkout). A place where an installed package carries them is
one more entry in `_places()`; nothing else changes. Found nowhere, it is a typed error.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.errors import NotFound

PACKAGE = "bench"  # run as `python -m bench`
_STOP_GRACE = 5.0  # seconds a child has to stop after Ctrl-C before it is killed


@dataclass(frozen=True)
class Benchmarks:
    root: Path  # the directory that holds the `bench` package

    def command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", PACKAGE, *args]


def _places() -> Iterator[Path]:
    """Where the `bench` package may be, first found first used."""
    # The checkout holding this very `broker` package, when it runs from one.
    yield Path(__file__).resolve().parent.parent


def _holds_benchmarks(root: Path) -> bool:
    # pyproject.toml as well: a site-packages that happens to hold some other `bench` package
    # is not a libos checkout.
    return (root / PACKAGE / "__main__.py").is_file() and (root / "pyproject.toml").is_file()


def find() -> Benchmarks:
    for root in _places():
        if _holds_benchmarks(root):
            return Benchmarks(root)
    raise NotFound("the benchmarks are not installed with libos: they live in bench/ of a "
                   "source checkout; run `libos bench` from a libos installed from one "
                   "(pip install -e .)")


def run(json_out: Path | None = None, only: Sequence[str] = ()) -> int:
    """Run the benchmarks (all, or the suites in `only`); returns their exit status. A
    relative `json_out` is the caller's, not the checkout's."""
    benchmarks = find()
    args = [arg for suite in only for arg in ("--only", suite)]
    if json_out is not None:
        args += ["--json-out", str(json_out.resolve())]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(benchmarks.root),
                                                       os.environ.get("PYTHONPATH")]))}
    with subprocess.Popen(benchmarks.command(args), cwd=benchmarks.root, env=env) as child:
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
