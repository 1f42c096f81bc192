"""A key file given to `libos keys trust` or `libos audit --verify --trust` that is not a
regular file (a FIFO nobody writes, a device) is a typed error at once, never a hang; a
regular key file beside it is still read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from broker.store import SQLiteStore
from broker.store.keys import KEY_ENV, AuditKey
from tests.conftest import bare_env

REPO = Path(__file__).resolve().parents[2]


def libos(tmp_path: Path, *args: str) -> tuple[int, dict]:
    env = bare_env(HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path / "state"))
    env[KEY_ENV] = str(tmp_path / "me" / "audit.key")
    done = subprocess.run([sys.executable, "-m", "broker.cli", *args, "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=20)
    assert "Traceback" not in done.stderr
    return done.returncode, json.loads(done.stdout)


def test_a_fifo_as_a_key_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "other.pub"
    os.mkfifo(fifo)  # nobody ever writes it: an open for reading would wait forever
    code, out = libos(tmp_path, "keys", "trust", str(fifo))
    assert code != 0 and out["error"] == "INVALID_ARGUMENT" and "regular file" in out["message"]
    SQLiteStore(tmp_path / "libos.db").close()
    code, out = libos(tmp_path, "audit", "--verify", "--trust", str(fifo),
                      "--db", str(tmp_path / "libos.db"))
    assert code != 0 and out["error"] == "INVALID_ARGUMENT" and "regular file" in out["message"]
    assert not (tmp_path / "me" / "trusted").exists()  # nothing added
    # The neighbour: a real key file is trusted.
    other = AuditKey.open(tmp_path / "other" / "audit.key")
    code, out = libos(tmp_path, "keys", "trust", str(tmp_path / "other" / "audit.key.pub"))
    assert code == 0 and out["trusted"] == other.public
