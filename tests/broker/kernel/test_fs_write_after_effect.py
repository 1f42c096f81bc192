"""A store that fails after `fs.write` has replaced a file (its write narrowing the file's
labels to the writer's): the file was replaced, so the call is not a `Conflict` ("nothing of
it was done", which invites the caller to do it again): the write is answered and recorded as
done, the labels are left as they were (more than the file now holds: the safe side, as a
crash there would leave them), and a log line says why. Real SQLite, a trigger that fails."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from broker import Kernel
from tests.conftest import open_image


@pytest.fixture
async def kernel(db_path: Path):  # type: ignore[no-untyped-def]
    async with Kernel.open(db_path) as k:
        yield k


def _fail_label_deletes(db_path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("CREATE TRIGGER fail_label_delete BEFORE DELETE ON file_labels"
                  " BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    return other


async def test_a_replaced_file_whose_label_narrowing_fails_is_a_write_done(
        kernel: Kernel, db_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    (root / "work").mkdir()
    (root / "work" / "f.txt").write_text("old secret")
    (root / "work" / "g.txt").write_text("old")
    kernel.store.set_file_labels("/work/f.txt", ["secret"])
    await open_image(kernel, needs=("fs:/**:read,write",))
    pid = kernel.spawn("agent", caps=["fs:/work/**:read,write"])
    other = _fail_label_deletes(db_path)
    try:
        with caplog.at_level(logging.WARNING):
            written = await kernel.call_tool(pid, "write_file",
                                             {"path": "/work/f.txt", "data": "new"})
    finally:
        other.close()
    assert written == 3
    assert (root / "work" / "f.txt").read_text() == "new"
    # The record says what happened: the write, done (not a Conflict for an effect made).
    outcomes = [r for r in kernel.audit(pid) if r["syscall"] == "fs.write"
                and r["phase"] in ("outcome", "intent+outcome")]
    assert [r["detail"]["ok"] for r in outcomes] == [True]
    # The labels stay over (never under) what the file holds, and the reason is logged.
    assert kernel.store.file_labels("/work/f.txt") == {"secret"}
    assert any("labels" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    # The neighbour: a write whose labels need no change works as ever.
    assert await kernel.call_tool(pid, "write_file", {"path": "/work/g.txt", "data": "x"}) == 1
    assert kernel.verify_audit()[1] == []
