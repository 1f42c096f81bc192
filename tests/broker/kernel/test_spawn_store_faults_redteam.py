"""Red team (rt/holes) of 5ea31f1 (a spawn whose grants fail leaves no half-made process): the
process row is committed before its grants, and a spawn whose grants fail ends that row only
with a deferred write ("with the next commit"). A kill -9 before that commit (the host told
Conflict, "nothing of it was done") leaves the row `created`, and a restart reloads a
`created` process as runnable: a process nobody was given comes back, with no grants. Real
SQLite; the crash is a copy of what is committed (SQLite's backup) opened by a new broker."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker import AgentImage, Conflict, Kernel
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_host_store_faults import CAPS


def _committed(db: Path, to: Path) -> None:
    """What a kill -9 now would leave: the committed database (no open transaction)."""
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()


async def test_a_spawn_that_failed_is_not_alive_after_a_crash(
        kernel: Kernel, fault: Fault, db_path: Path, tmp_path: Path) -> None:
    fault.install("capabilities")
    await kernel.register_image(AgentImage("clock", tools=("sleep", "now"), needs=tuple(CAPS)))
    before = {p["pid"] for p in kernel.store.list_processes()}
    fault.set(True)
    with pytest.raises(Conflict):
        kernel.spawn("clock", caps=CAPS)
    fault.set(False)
    _committed(db_path, tmp_path / "after-crash.db")
    async with Kernel.open(tmp_path / "after-crash.db") as restarted:
        alive = [(p["pid"], p["state"]) for p in restarted.store.list_processes()
                 if p["pid"] not in before and p["state"] not in ("killed", "exited")]
        assert alive == [], alive
        assert [p["pid"] for p in restarted.ps() if p["state"] not in ("killed", "exited")] \
            == []
