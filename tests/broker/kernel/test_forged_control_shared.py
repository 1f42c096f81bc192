"""Red team 15 where brokers share a PostgreSQL store (`broker=`): a control request counts
only signed by a key the broker trusts (the set its shared records are checked with), and a
copy of one applied is refused, as on a single writer's store
(`test_forged_control_redteam15`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from broker import Kernel
from broker.store.audit import CONTROL_RECORD
from tests.broker.store.conftest import raw
from tests.conftest import open_image

COLUMNS = "verb, pid, created, arg, sig"


def _insert(dsn: str, row: tuple[Any, ...]) -> int:
    with raw(dsn) as db:
        return int(db.execute(f"INSERT INTO control({COLUMNS}) VALUES (?,?,?,?,?) RETURNING id",
                              row).fetchone()[0])


def _row(dsn: str, request: int) -> tuple[Any, ...]:
    with raw(dsn) as db:
        return tuple(db.execute(f"SELECT {COLUMNS} FROM control WHERE id=?",
                                (request,)).fetchone())


async def test_shared_brokers_refuse_a_forged_resume_and_a_copy(pg_database: str,
                                                                 tmp_path: Path) -> None:
    async with Kernel.open(pg_database, broker="a", fs_root=tmp_path / "a") as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
        kernel.pause(pid)
        forged = _insert(pg_database, ("resume", pid, time.time(), None, None))
        kernel.controls.apply()
        assert kernel.store.control_result(forged)["error"] == "NOT_CAPABLE"
        assert kernel.process_info(pid)["state"] == "paused"
        genuine = kernel.store.add_control("resume", pid)  # the neighbour: applied
        kernel.controls.apply()
        assert kernel.store.control_result(genuine) == {"applied": True}
        assert kernel.process_info(pid)["state"] != "paused"
        kernel.pause(pid)
        copy = _insert(pg_database, _row(pg_database, genuine))
        kernel.controls.apply()
        answer = kernel.store.control_result(copy)
        assert answer["error"] == "CONFLICT" and "applied before" in answer["message"]
        assert kernel.process_info(pid)["state"] == "paused"
        taken = [(r["phase"], r["detail"].get("error")) for r in kernel.audit(pid)
                 if r["syscall"] == CONTROL_RECORD]
        assert taken == [("rejected", "NOT_CAPABLE"), ("admin", None), ("rejected", "CONFLICT")]


async def test_a_peer_that_opens_after_the_record_was_deleted_refuses_the_copy(
        pg_database: str, tmp_path: Path) -> None:
    """Lane ctlbreak: the record of the applied request deleted, another broker of the
    shared store opens within the window and takes the process: the chain is broken among
    its records, so the copy is refused (`ControlRequests._whole_since`), on the record."""
    async with Kernel.open(pg_database, broker="a", fs_root=tmp_path / "a") as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
        kernel.pause(pid)
        genuine = kernel.store.add_control("resume", pid)
        kernel.controls.apply()
        assert kernel.store.control_result(genuine) == {"applied": True}
        kernel.pause(pid)
    saved = _row(pg_database, genuine)
    with raw(pg_database) as db:
        db.execute("DELETE FROM audit WHERE syscall = ?", (CONTROL_RECORD,))
    copy = _insert(pg_database, saved)
    async with Kernel.open(pg_database, broker="b", fs_root=tmp_path / "b") as kernel:
        assert kernel.process_info(pid)["state"] == "paused"  # (taken here: its lease)
        kernel.controls.apply()
        answer = kernel.store.control_result(copy)
        assert answer["error"] == "CONFLICT" and "chain is broken" in answer["message"], answer
        assert kernel.process_info(pid)["state"] == "paused"
        [refused] = [r for r in kernel.audit(pid) if r["syscall"] == CONTROL_RECORD]
        assert refused["phase"] == "rejected" and refused["detail"]["error"] == "CONFLICT"
