"""`libos demo`'s Pyodide sandbox, started as the `libos` command's module is imported, before
trio, rich and the broker are (`sandboxes/prestart.py` says why and how it is adopted).

`broker/cli.py` imports this module first. Only the command line of the `libos` program itself
(`libos demo ...`, `python -m broker.cli demo ...`) starts one: never another program that
imports the CLI (a test calling `main`), never another command. What is started and not taken
by the demo is closed by `main` (`discard`), or at the interpreter's exit.
"""

from __future__ import annotations

import atexit
import sys
from pathlib import Path

from sandboxes.prestart import Prestarted

PROGRAM = "libos"  # argv[0] of the console script
CLI = Path(__file__).with_name("cli.py")  # argv[0] of `python -m broker.cli`


def wanted(argv: list[str]) -> bool:
    """`libos demo ...` or `python -m broker.cli demo ...`: not another program named cli.py
    that imports the CLI (a sandbox it would not run, started and killed)."""
    if argv[1:2] != ["demo"]:
        return False
    program = Path(argv[0])
    return program.name == PROGRAM or (program.name == CLI.name and _same_file(program, CLI))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def start_pyodide() -> Prestarted | None:
    """The demo's Pyodide spare, started now; None where Pyodide is not installed or it could
    not start (the driver then starts it as always, and says why if it cannot)."""
    from sandboxes.base import CallLimits
    from sandboxes.deno_launch import find_deno, rlimit_data_mb
    from sandboxes.prestart import start
    from sandboxes.pyodide_assets import (
        PY_DATA_BASE_MB,
        PY_MAIN,
        pyodide_argv,
        pyodide_available,
        pyodide_dir,
    )

    directory = pyodide_dir()
    if not pyodide_available(directory):
        return None
    memory_mb = CallLimits().memory_mb
    try:
        return start(pyodide_argv(find_deno(), memory_mb, directory, PY_MAIN),
                     rlimit_data_mb(PY_DATA_BASE_MB, memory_mb))
    except Exception:
        return None


_spare: Prestarted | None = None


def take() -> Prestarted | None:
    """The spare started for this command (once): the taker closes it if no driver adopts it."""
    global _spare
    spare, _spare = _spare, None
    return spare


def discard() -> None:
    spare = take()
    if spare is not None:
        spare.close()


if wanted(sys.argv):
    _spare = start_pyodide()
    # Ctrl-C while the CLI still imports: closed at the interpreter's exit (its home removed;
    # the process would exit by itself once its stdin closes).
    atexit.register(discard)
