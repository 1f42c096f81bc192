"""The `libos` command whose reader went away, or whom a person stopped with Ctrl-C, run for
real: an error reported where nobody reads any more, a Ctrl-C that reaches the kernel's
nursery, end with their exit status and never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.cli_errors import EXIT_ERROR, EXIT_INTERRUPTED, FailedBesideCtrlC, typed_errors
from broker.errors import Cancelled, NotFound
from tests.conftest import bare_env

LIBOS = [sys.executable, "-m", "broker.cli"]
REFUSED = (["--json", "nosuchcommand"], ["--json", "caps", "notanumber"])


def _run_with_reader_gone(args: list[str], gone: str) -> tuple[int, str]:
    """Run `libos args` with the reading end of its stdout's or stderr's pipe (`gone`) closed
    at once; returns its exit status and what it wrote on the other stream."""
    child = subprocess.Popen([*LIBOS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=bare_env(COLUMNS="100"))
    closed, kept = (child.stdout, child.stderr) if gone == "stdout" else (
        child.stderr, child.stdout)
    assert closed is not None and kept is not None
    closed.close()  # before the interpreter has even started: its reader is gone
    said = kept.read().decode()
    return child.wait(timeout=60), said


@pytest.mark.parametrize("args", REFUSED)
def test_a_json_error_whose_reader_went_away_is_no_traceback(args: list[str]) -> None:
    code, err = _run_with_reader_gone(args, "stdout")
    assert code == EXIT_ERROR
    assert err == ""


@pytest.mark.parametrize("args", [["nosuchcommand"], ["caps", "notanumber"]])
def test_an_error_whose_stderr_reader_went_away_keeps_its_status(args: list[str]) -> None:
    code, out = _run_with_reader_gone(args, "stderr")
    assert code == EXIT_ERROR  # (rich's own answer to a broken pipe is exit status 1)
    assert out == ""


def test_the_same_errors_with_their_readers_still_say_so() -> None:
    """The neighbour: nobody left, the error is reported as always."""
    done = subprocess.run([*LIBOS, *REFUSED[0]], capture_output=True, text=True, timeout=60,
                          env=bare_env(COLUMNS="100"))
    assert done.returncode == EXIT_ERROR
    assert json.loads(done.stdout)["error"] == "INVALID_ARGUMENT"


def test_ctrl_c_that_comes_out_of_a_nursery_is_an_interrupt() -> None:
    """trio wraps the KeyboardInterrupt it raises in a task in an exception group."""
    with pytest.raises(KeyboardInterrupt), typed_errors():
        raise BaseExceptionGroup("nursery", [KeyboardInterrupt()])
    with pytest.raises(KeyboardInterrupt), typed_errors():  # and what it cancelled meanwhile
        raise BaseExceptionGroup("nursery", [BaseExceptionGroup("inner", [
            KeyboardInterrupt()]), Cancelled("a call the interrupt ended")])
    # A real failure beside it is not hidden behind the interrupt (`test_ctrl_c`'s real SIGINT).
    with pytest.raises(FailedBesideCtrlC) as beside, typed_errors():
        raise BaseExceptionGroup("nursery", [KeyboardInterrupt(), NotFound("no process 9")])
    assert [type(f) for f in beside.value.failures] == [NotFound]
    with pytest.raises(NotFound), typed_errors():  # no interrupt: the typed error, as ever
        raise BaseExceptionGroup("nursery", [NotFound("no process 9")])


def test_ctrl_c_during_the_demo_ends_it_with_130_and_no_traceback(tmp_path: Path) -> None:
    child = subprocess.Popen([*LIBOS, "demo", "--db", str(tmp_path / "d.db")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=bare_env(COLUMNS="100"))
    assert child.stdout is not None and child.stderr is not None
    for line in iter(child.stdout.readline, b""):  # (an early end is a failure, not a hang)
        if b"Act 1" in line:  # inside the kernel's nursery now
            break
    else:
        child.kill()
        pytest.fail(f"the demo ended before its act 1: {child.stderr.read().decode()}")
    child.send_signal(signal.SIGINT)
    child.stdout.read()
    err = child.stderr.read().decode()
    assert child.wait(timeout=60) == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    # What the broker recorded before it stopped is whole: the chain verifies.
    verify = subprocess.run([*LIBOS, "audit", "--verify", "--json", "--db",
                             str(tmp_path / "d.db")], capture_output=True, text=True,
                            timeout=60, env=bare_env(COLUMNS="100"))
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True, verify.stdout


def test_the_demo_runs_whole_with_stderr_closed_from_the_start(tmp_path: Path) -> None:
    """A stream closed when the interpreter started is None in `sys` (a daemon's `2>&-`):
    the demo flushed it before it forked act 2's broker, and failed with INTERNAL."""
    done = subprocess.run([*LIBOS, "demo", "--db", str(tmp_path / "d.db")], stdout=subprocess.PIPE,
                          timeout=120, env=bare_env(COLUMNS="100"), pass_fds=(),
                          preexec_fn=lambda: os.close(2))
    assert done.returncode == 0
    assert b"audit chain verified" in done.stdout


def _script() -> str:
    """What the installed `libos` script runs (pip writes it from pyproject's entry point)."""
    import tomllib

    with open(Path(__file__).parents[2] / "pyproject.toml", "rb") as project:
        target = tomllib.load(project)["project"]["scripts"]["libos"]
    module, function = target.split(":")
    return f"import re\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"


def _importing(pid: int) -> bool:
    """The CLI's imports have begun (past Python's own start and `site`): an extension module
    the CLI's first import loads (`_hashlib`, by `broker.cli_prestart`) is mapped."""
    try:
        return "_hashlib" in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.parametrize("attempt", range(3))
def test_ctrl_c_while_the_cli_imports_ends_it_with_130_and_no_traceback(
        tmp_path: Path, attempt: int) -> None:
    """A Ctrl-C a moment after `libos` starts (its imports take a second on a slow machine)
    printed the traceback of the import it cut. Now the script's entry point imports the CLI
    inside its handling of Ctrl-C: 130, nothing on stderr."""
    child = subprocess.Popen([sys.executable, "-c", _script(), "ps", "--db",
                              str(tmp_path / "d.db")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=bare_env(COLUMNS="100"),
                             cwd=Path(__file__).parents[2])
    while child.poll() is None and not _importing(child.pid):
        time.sleep(0.002)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == EXIT_INTERRUPTED, err.decode()
    assert not err, err.decode()
