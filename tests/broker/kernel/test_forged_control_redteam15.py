"""Red team 15 on the control requests `libos pause/resume/kill/fork` leave in the store
(`Controls.apply`; lane heldkill's f333dfc widened who takes them to the processes a broker
found held).

MEDIUM, not fixed (a design change): a control request is a row, and anyone who writes the
database writes one. `who` in it is recorded as a claim (`via: store`), but the request is
applied as the operator's own: a database writer holding no key resumes a process the
operator paused (an operator's hold no process may lift, invariant 10's act), or forks one
(a second copy of its authority running). Killing one is the denial of service such a
writer has anyway (DESIGN §9); lifting the operator's pause is not. A fix: the `libos`
command signs its request with its user's key, and a broker applies only one signed by a
key it trusts (as records that vouch are, invariant 15).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker import Kernel
from tests.conftest import open_image


def _writer_asks(db_path: Path, verb: str, pid: int) -> None:
    """The database writer's own row: no key, no `libos` command."""
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        db.execute("INSERT INTO control(verb, pid, created, arg) VALUES (?,?,?,NULL)",
                   (verb, pid, 0.0))
    finally:
        db.close()


@pytest.mark.xfail(strict=True, reason="control requests are unsigned rows: a database writer"
                   " lifts the operator's pause (needs requests signed by a trusted key)")
async def test_a_forged_resume_does_not_lift_the_operators_pause(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
        kernel.pause(pid)
        assert kernel.process_info(pid)["state"] == "paused"
        _writer_asks(db_path, "resume", pid)
        kernel.controls.apply()
        assert kernel.process_info(pid)["state"] == "paused"


async def test_the_operators_own_request_still_resumes(db_path: Path) -> None:
    """The neighbour: the request `libos resume` leaves is applied and recorded."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
        kernel.pause(pid)
        kernel.store.add_control("resume", pid)
        kernel.controls.apply()
        assert kernel.process_info(pid)["state"] == "runnable"
        assert [r["detail"]["signal"] for r in kernel.audit(pid)
                if r["syscall"] == "proc.signal" and r["phase"] == "admin"] == ["pause", "resume"]
