"""One stale Pyodide snapshot remade by `libos setup`, shared by every test that needs "a stale
snapshot is remade" (a remake boots Pyodide without its snapshot: the slowest step there is).

The remake runs once for the whole test run: xdist workers share it through a lock file in
their common temporary directory. Tests read the result and never change it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from sandboxes.pyodide import STAMP, pyodide_dir
from tests.conftest import bare_env

ROOT = Path(__file__).resolve().parent.parent
STALE = "other"  # the stamp's runtime hash: as another libos left it


@dataclass(frozen=True)
class Remade:
    directory: Path
    returncode: int
    stdout: str
    stderr: str


def stale_copy(directory: Path) -> Path:
    """This machine's Pyodide copied to `directory` as another libos left it: its snapshot
    made with another runtime, to be made again."""
    shutil.copytree(pyodide_dir(), directory)
    stamp = directory / STAMP
    stamp.chmod(0o644)
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "runtime_sha256": STALE}))
    return directory


def _remake(directory: Path) -> Remade:
    # Piped (no progress), and offline: no npm on PATH, so nothing could be fetched.
    env = bare_env(HOME=os.environ.get("HOME", "/"), PATH="/nonexistent",
                   LIBOS_PYODIDE_DIR=str(stale_copy(directory)))
    done = subprocess.run([sys.executable, "-m", "broker.cli", "setup"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    return Remade(directory, done.returncode, done.stdout, done.stderr)


def remade_once(shared: Path) -> Remade:
    """The remake in `shared` (made by whichever caller comes first, under a lock)."""
    shared.mkdir(parents=True, exist_ok=True)
    result = shared / "remade-pyodide.json"
    with open(shared / "remade-pyodide.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            made = _remake(shared / "remade-pyodide")
            result.write_text(json.dumps({**asdict(made), "directory": str(made.directory)}))
    fields = json.loads(result.read_text())
    return Remade(**{**fields, "directory": Path(fields["directory"])})
