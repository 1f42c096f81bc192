"""`libos demo` starts its sandboxes (Pyodide's, TypeScript's) before the CLI's imports
(`broker/cli_prestart.py`), only for the `libos` program's own `demo` command; and a demo
whose reader goes away (`libos demo | head`) ends quietly, as a program SIGPIPE ended."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from broker.cli_errors import EXIT_STDOUT_CLOSED
from broker.cli_prestart import CLI, wanted
from sandboxes.pyodide import pyodide_available
from tests.conftest import bare_env
from tests.sandboxes.test_deno import alive


@pytest.mark.parametrize(("argv", "starts"), [
    (["/usr/local/bin/libos", "demo"], True),
    ([str(CLI), "demo", "--db", "d.db"], True),  # python -m broker.cli demo
    (["/elsewhere/cli.py", "demo"], False),  # another program named so, that imports the CLI
    (["/usr/local/bin/libos", "ps"], False),
    (["/usr/local/bin/libos", "--json", "demo"], False),  # (then started as always)
    (["/usr/bin/pytest", "demo"], False),  # another program that imports the CLI
    (["-c", "demo"], False),
])
def test_only_the_libos_program_demo_command_starts_one(argv: list[str], starts: bool) -> None:
    assert wanted(argv) is starts


def test_those_the_demo_did_not_take_are_closed_by_main() -> None:
    """Started as the module is imported; `main` of a command that is no demo (a usage error
    here) kills and reaps them, and removes their homes."""
    code = ("import sys; sys.argv = ['libos', 'demo']\n"
            "from broker import cli_prestart\n"
            "spares = cli_prestart._spares\n"
            "if spares.python is None or spares.ts is None: sys.exit('not both started')\n"
            "from broker.cli import main\n"
            "assert main(['demo', '--no-such-flag']) == 2\n"
            "for spare in spares.started():\n"
            "    print(spare.state, spare.popen.pid, spare.popen.returncode is not None,\n"
            "          spare.home.tmp)\n")
    if not pyodide_available():
        pytest.skip("Pyodide is not installed here (`libos setup`)")
    done = _child(code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        state, pid, reaped, home = line.split()
        assert state == "closed" and reaped == "True" and not alive(int(pid))
        assert not os.path.exists(home)


def test_those_left_when_the_cli_never_ran_are_closed_at_exit() -> None:
    """Ctrl-C while the CLI still imports: the interpreter's exit kills them and removes their
    homes (a process that died harder leaves the home; the sandbox exits once its stdin
    closes)."""
    if not pyodide_available():
        pytest.skip("Pyodide is not installed here (`libos setup`)")
    code = ("import sys; sys.argv = ['libos', 'demo']\n"
            "from broker import cli_prestart\n"
            "for spare in cli_prestart._spares.started():\n"
            "    print(spare.popen.pid, spare.home.tmp, flush=True)\n"
            "raise KeyboardInterrupt\n")
    done = _child(code)
    assert done.returncode != 0 and "KeyboardInterrupt" in done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:
        pid, home = line.split()
        assert not alive(int(pid)) and not os.path.exists(home)


def test_a_demo_whose_reader_went_away_ends_quietly() -> None:
    child = subprocess.Popen([sys.executable, "-m", "broker.cli", "demo"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=bare_env(COLUMNS="80"))
    assert child.stdout is not None and child.stderr is not None
    child.stdout.readline()  # (an empty line, then the first act's heading)
    child.stdout.close()  # `head` has what it wanted
    err = child.stderr.read()
    assert child.wait(timeout=120) == EXIT_STDOUT_CLOSED
    assert err == b""


# Modules the CLI imports anyway, each some ms of CPU: the demo's sandboxes are spawned
# before them, so Pyodide's start (the demo's longest wait) begins that much earlier.
IMPORTED_AFTER_THE_SPAWNS = ("dataclasses", "inspect", "ast", "logging", "trio", "rich",
                             "sandboxes.base")


def test_the_demo_s_sandboxes_are_spawned_before_the_heavier_imports() -> None:
    code = ("import subprocess, sys\n"
            "sys.argv = ['libos', 'demo']\n"
            "spawn = subprocess.Popen.__init__\n"
            f"WATCHED = {IMPORTED_AFTER_THE_SPAWNS!r}\n"
            "def watched(self, *args, **kwargs):\n"
            "    print('spawned:', *[m for m in WATCHED if m in sys.modules], flush=True)\n"
            "    return spawn(self, *args, **kwargs)\n"
            "subprocess.Popen.__init__ = watched\n"
            "from broker import cli_prestart\n"
            "started = cli_prestart._spares.started()\n"
            "cli_prestart.discard()\n"
            "print('started', len(started))\n")
    done = _child(code)
    assert done.returncode == 0, done.stderr
    *spawns, started = done.stdout.splitlines()
    assert started == f"started {1 + pyodide_available()}" and len(spawns) >= 1
    assert spawns == ["spawned:"] * len(spawns)  # no watched module was imported yet


@pytest.mark.parametrize(("argv", "held"), [(["libos", "demo"], True), (["libos", "ps"], False)])
def test_the_collector_is_off_only_while_the_demo_imports(argv: list[str], held: bool) -> None:
    """`libos demo` turns the cyclic collector off before its imports, and on again (the
    objects made so far frozen) once they are done; another command leaves it alone. (Frozen
    against the count at start: Python 3.12's permanent generation is not empty then.)"""
    code = ("import gc, sys\n"
            "at_start = gc.get_freeze_count()\n"
            f"sys.argv = {argv!r}\n"
            "from broker import cli_prestart\n"
            "cli_prestart.discard()\n"
            "print(gc.isenabled())\n"
            "import broker.demo, broker.demo_story\n"
            "cli_prestart.imports_done()\n"
            "print(gc.isenabled(), gc.get_freeze_count() > at_start)\n")
    assert _printed(code) == [str(not held), f"True {held}"]


def test_the_demo_imports_the_wasm_driver_while_the_collector_is_held() -> None:
    """With its sandboxes started ahead, the demo imports the WASM driver with the story,
    before the collector is on again (about 3 ms less CPU), not in its trio run."""
    if not pyodide_available():
        pytest.skip("Pyodide is not installed here (`libos setup`)")
    assert _printed("import gc, sys\n"
                    "sys.argv = ['libos', 'demo']\n"
                    "from broker import cli_prestart\n"
                    "from broker.demo import import_story\n"
                    "spares = cli_prestart.take()\n"
                    "import_story(spares)\n"
                    "spares.close()\n"
                    "print('sandboxes.wasm' in sys.modules, gc.isenabled())\n") == ["True True"]


def test_the_demo_turns_on_no_collector_an_embedder_turned_off() -> None:
    assert _printed("import gc\n"
                    "gc.disable()\n"
                    "from broker import cli_prestart\n"
                    "cli_prestart.imports_done()\n"
                    "print(gc.isenabled())\n") == ["False"]


def test_the_demo_imports_no_module_only_setup_needs() -> None:
    """`tarfile` unpacks Pyodide's package in `libos setup`; the demo imported it with the
    Pyodide driver (a few ms of CPU before act 1)."""
    code = ("import sys\n"
            "import broker.cli, broker.demo, broker.demo_story, sandboxes.available\n"
            "import sandboxes.pyodide, sandboxes.wasm\n"
            "print('tarfile' in sys.modules)\n")
    assert _printed(code) == ["False"]


def test_the_demo_s_sandboxes_get_the_heap_cap_of_a_call() -> None:
    """The prestarted command lines are what the drivers would run (so they adopt them)."""
    from broker.cli_prestart import MEMORY_MB
    from sandboxes.base import CallLimits

    assert CallLimits().memory_mb == MEMORY_MB


def _printed(code: str) -> list[str]:
    """The lines `code` printed, run by `_child` (which must succeed)."""
    done = _child(code)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _child(code: str) -> subprocess.CompletedProcess[str]:
    """`code` run by a Python of its own, where this run finds Pyodide."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=_env())


def _env() -> dict[str, str]:
    """Where this run finds Pyodide (the user's cache, or LIBOS_PYODIDE_DIR)."""
    env = bare_env(HOME=os.environ.get("HOME", "/root"))
    if "LIBOS_PYODIDE_DIR" in os.environ:
        env["LIBOS_PYODIDE_DIR"] = os.environ["LIBOS_PYODIDE_DIR"]
    return env
