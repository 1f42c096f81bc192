"""A command pointed at a file that is not a libos store refuses it and leaves it as it was:
the same bytes, the same modification time, and nothing new beside it (no -wal, -shm or
.lock). Someone's own SQLite database, in either journal mode, and an empty file.

Every command runs through the CLI's `main` in this process (its exit status, its output, and
the file after it); one reader and one writer per kind also run as a real `libos` process (the
whole-process path: its exit status and its streams). Ninety fresh interpreters, each importing
the CLI, made this the suite's slowest file and asserted nothing more."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

LIBOS = [sys.executable, "-m", "broker.cli"]
READERS = [["ps"], ["audit"], ["audit", "--verify"], ["caps", "1"], ["approvals"],
           ["approvals", "--all"], ["approvals", "show", "apr_1"], ["images"],
           ["image", "show", "x"], ["checkpoints", "1"]]
# Not read-only, but they too may only write into a libos store.
WRITERS = [["approve", "apr_1"], ["deny", "apr_1"], ["answer", "apr_1", "7"],
           ["pause", "1", "--wait", "0"], ["fork", "1", "--wait", "0"]]


def _theirs(path: Path, journal: str) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA journal_mode={journal}")
    db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.execute("INSERT INTO customers (name) VALUES ('ann'), ('bob')")
    db.commit()
    db.close()


def _state(directory: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.iterdir())}


def _refused(code: int, stdout: str, stderr: str, command: list[str], as_json: bool) -> None:
    assert code == 2, (command, stdout, stderr)
    out = stdout if as_json else stderr
    assert "Traceback" not in stderr
    assert "not a libos store" in out, (command, out)
    if as_json:
        assert json.loads(stdout)["error"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("kind", ["sqlite-rollback", "sqlite-wal", "empty"])
def test_commands_refuse_a_file_that_is_not_a_store_and_leave_it_as_it_was(
        tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    from broker.cli import main

    path = tmp_path / "their.db"
    if kind == "empty":
        path.write_bytes(b"")
    else:
        _theirs(path, kind.removeprefix("sqlite-"))
    before = _state(tmp_path)
    assert list(before) == ["their.db"]  # a WAL database closed cleanly: one file
    for command in READERS + WRITERS:
        for json_flag in ([], ["--json"]):
            code = main(["--db", str(path), *command, *json_flag])
            out, err = capsys.readouterr()
            _refused(code, out, err, command, bool(json_flag))
            assert _state(tmp_path) == before, command  # byte for byte, and nothing beside it
    for command, json_flag in ((READERS[0], ["--json"]), (WRITERS[0], [])):  # as a process
        done = subprocess.run([*LIBOS, "--db", str(path), *command, *json_flag],
                              capture_output=True, text=True, timeout=60)
        _refused(done.returncode, done.stdout, done.stderr, command, bool(json_flag))
        assert _state(tmp_path) == before, command
    if kind != "empty":  # still their database, whole
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        assert db.execute("SELECT name FROM customers ORDER BY id").fetchall() == [
            ("ann",), ("bob",)]
        db.close()


async def test_a_broker_refuses_their_database_but_starts_in_an_empty_file(
        tmp_path: Path) -> None:
    from broker import InvalidArgument, Kernel

    theirs = tmp_path / "theirs.db"
    _theirs(theirs, "wal")
    before = _state(tmp_path)
    with pytest.raises(InvalidArgument, match="not a libos store"):
        async with Kernel.open(theirs):
            pass
    assert _state(tmp_path) == before
    empty = tmp_path / "new.db"
    empty.write_bytes(b"")
    async with Kernel.open(empty) as kernel:  # an empty file is a new store
        assert kernel.ps() == []
    done = subprocess.run([*LIBOS, "--db", str(empty), "ps", "--json"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout) == []
