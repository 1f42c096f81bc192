"""Bench tools sign with an audit key of their own (`bench/__init__.py`), never the user's:
a bench run once made `~/.config/libos/audit.key` mid-CI, and the tests' check that the
user's key is left alone failed. `libos bench` is run here with a HOME of its own and no
`LIBOS_AUDIT_KEY`: nothing appears under `~/.config/libos`, and the bench's key directory is
gone after it. Neighbour: a key the user names in `LIBOS_AUDIT_KEY` is the one used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = "import sys, broker.cli; sys.exit(broker.cli.main(sys.argv[1:]))"


def _bench(tmp_path: Path, **extra: str) -> tuple[Path, Path]:
    """`libos bench --quick --section durability` (it opens kernels) in a child with a HOME
    and a TMPDIR of its own; those two."""
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    pyodide = {k: v for k, v in os.environ.items() if k == "LIBOS_PYODIDE_DIR"}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch), **pyodide,
           **extra}
    run = subprocess.run([sys.executable, "-c", CLI, "bench", "--quick", "--section",
                          "durability", "--out-dir", str(tmp_path / "report")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "report" / "report.json").is_file()
    return home, scratch


def test_libos_bench_leaves_the_users_key_directory_alone(tmp_path: Path) -> None:
    home, scratch = _bench(tmp_path)
    assert not (home / ".config" / "libos").exists()
    assert list(scratch.iterdir()) == []  # (its own key's directory: removed at its exit)


def test_a_key_the_user_names_is_used(tmp_path: Path) -> None:
    mine = tmp_path / "mine" / "audit.key"
    home, _ = _bench(tmp_path, LIBOS_AUDIT_KEY=str(mine))
    assert mine.is_file() and (mine.parent / "anchors").is_dir()
    assert not (home / ".config" / "libos").exists()


def test_a_bench_stopped_by_sigterm_leaves_no_key_behind(tmp_path: Path) -> None:
    """`atexit` does not run when a signal ends the process (a CI job's timeout, `timeout`,
    a closed terminal): the bench's key directory was left in the temporary directory (red
    team 25). It is removed, and the process still ends by that signal."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(scratch)}
    code = ("import os, time, bench; print(os.environ['LIBOS_AUDIT_KEY'], flush=True); "
            "time.sleep(60)")
    with subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2],
                          env=env, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        key = Path(child.stdout.readline().strip())
        assert key.parent.is_dir() and key.parent.parent == scratch
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM
    assert list(scratch.iterdir()) == []


def test_libos_bench_leaves_no_key_behind_when_its_child_is_killed(tmp_path: Path) -> None:
    """`libos bench` kills its child when it does not stop within a grace after Ctrl-C (or
    anything may kill it): a key directory the child made was left (red team 25). `libos
    bench` makes it, and removes it when the child has ended, however it ended."""
    home, scratch = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    scratch.mkdir()
    pyodide = {k: v for k, v in os.environ.items() if k == "LIBOS_PYODIDE_DIR"}
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(scratch), **pyodide}
    with subprocess.Popen([sys.executable, "-c", CLI, "bench", "--quick", "--section",
                           "durability", "--out-dir", str(tmp_path / "report")],
                          cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as libos:
        children = Path(f"/proc/{libos.pid}/task/{libos.pid}/children")
        deadline = time.monotonic() + 60
        while not (children.read_text().split() and list(scratch.glob("libos-bench-key-*/"))):
            assert time.monotonic() < deadline and libos.poll() is None
            time.sleep(0.05)
        os.kill(int(children.read_text().split()[0]), signal.SIGKILL)
        assert libos.wait(60) == 128 + signal.SIGKILL
    assert list(scratch.iterdir()) == []
    assert not (home / ".config" / "libos").exists()
