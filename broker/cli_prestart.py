"""`libos demo`'s sandboxes (Pyodide's, then TypeScript's), started as the `libos` command's
module is imported, before trio, rich and the broker are (`sandboxes/prestart.py` says why and
how each is adopted).

`broker/cli.py` imports this module first. Only the command line of the `libos` program itself
(`libos demo ...`, `python -m broker.cli demo ...`) starts one: never another program that
imports the CLI (a test calling `main`), never another command. What is started and not taken
by the demo is closed by `main` (`discard`), or at the interpreter's exit.
"""

from __future__ import annotations

import atexit
import gc
import sys
from collections.abc import Callable
from pathlib import Path

from sandboxes.prestart import Prestarted, Spares

PROGRAM = "libos"  # argv[0] of the console script
CLI = Path(__file__).with_name("cli.py")  # argv[0] of `python -m broker.cli`
# The demo's heap cap: `CallLimits().memory_mb`, not imported (`sandboxes.base` brings
# `dataclasses`, and `inspect` and `ast` behind it: ~10 ms of CPU before Pyodide would start;
# tests/broker/test_cli_prestart.py checks the two agree). A cap that differed would only
# cost the demo its head start: a driver adopts only the command line it would have run.
MEMORY_MB = 256


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
    return _start(lambda deno, memory_mb: pyodide_argv(deno, memory_mb, directory, PY_MAIN),
                  PY_DATA_BASE_MB)


def start_ts() -> Prestarted | None:
    """The demo's TypeScript spare, started now; None if it could not start (the driver then
    starts it as always)."""
    from sandboxes.deno_launch import DATA_BASE_MB, MAIN, deno_argv

    return _start(lambda deno, memory_mb: deno_argv(deno, memory_mb, MAIN), DATA_BASE_MB,
                  emit_cache=False)  # as `DenoSandbox.emit_cache`


def _start(argv: Callable[[str, int], list[str]], data_base_mb: int, *,
           emit_cache: bool = True) -> Prestarted | None:
    """Start the command line `argv(deno, memory_mb)` as its driver would, with the default
    heap cap (the demo's)."""
    from sandboxes.deno_launch import find_deno, rlimit_data_mb
    from sandboxes.prestart import start

    memory_mb = MEMORY_MB
    try:
        return start(argv(find_deno(), memory_mb), rlimit_data_mb(data_base_mb, memory_mb),
                     emit_cache=emit_cache)
    except Exception:
        return None


_spares = Spares()
_collector_held = False  # this module turned the cyclic collector off (`hold_collector`)


def hold_collector() -> None:
    """Turn Python's cyclic collector off while the demo imports the CLI, the kernel and the
    sandboxes' drivers: its collections over the new modules' objects, which nothing frees,
    were about a twentieth of that CPU. `imports_done` turns it on again."""
    global _collector_held
    if gc.isenabled():
        gc.disable()
        _collector_held = True


def imports_done() -> None:
    """The demo's modules are imported: the collector is on again (if `hold_collector` turned
    it off), the objects made so far frozen (never traversed again: act 2's broker, forked
    next, then shares their pages instead of copying them at its first collection)."""
    global _collector_held
    if _collector_held:
        _collector_held = False
        gc.freeze()
        gc.enable()


def take() -> Spares:
    """The spares started for this command (once): the taker closes those no driver adopts."""
    global _spares
    spares, _spares = _spares, Spares()
    return spares


def discard() -> None:
    take().close()


if wanted(sys.argv):
    hold_collector()
    # Pyodide's first: its start is the longest, and its tool comes last in act 1.
    _spares = Spares(python=start_pyodide(), ts=start_ts())
    # Ctrl-C while the CLI still imports: closed at the interpreter's exit (its home removed;
    # the process would exit by itself once its stdin closes).
    atexit.register(discard)
