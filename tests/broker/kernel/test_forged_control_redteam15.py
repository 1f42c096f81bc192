"""Red team 15 on the control requests `libos pause/resume/kill/fork` leave in the store
(`Controls.apply`; lane heldkill's f333dfc widened who takes them to the processes a broker
found held).

MEDIUM, fixed: a control request was a row, and anyone who writes the database writes one; it
was applied as the operator's own: a database writer holding no key resumed a process the
operator paused (an operator's hold no process may lift, invariant 10's act), or forked one.
Now `libos` signs its request with its user's audit key, over the store it was made for, the
verb, pid, argument, time and a nonce (`broker.store.control_sig`), and a broker applies only
one signed by a key it trusts, fresh, whose nonce the chain does not already record as applied
(`broker.kernel.control_requests`). Each attack: refused with a typed answer in its row, the
process as it was, and a `rejected` `control.request` record (`via: store`) saying why.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from broker import Kernel
from broker.kernel.control_requests import WINDOW
from broker.store import control_sig
from broker.store.audit import CONTROL_RECORD
from broker.store.keys import AuditKey
from broker.store.opening import open_store
from tests.conftest import open_image

COLUMNS = "verb, pid, created, arg, sig"


def _insert(db_path: Path, verb: str, pid: int, created: float, arg: str | None = None,
            sig: str | None = None) -> int:
    """The database writer's own row (no `libos` command)."""
    db = sqlite3.connect(db_path, isolation_level=None)
    try:
        return int(db.execute(f"INSERT INTO control({COLUMNS}) VALUES (?,?,?,?,?) RETURNING id",
                              (verb, pid, created, arg, sig)).fetchone()[0])
    finally:
        db.close()


def _row(db_path: Path, request: int) -> tuple[Any, ...]:
    db = sqlite3.connect(db_path)
    try:
        return tuple(db.execute(f"SELECT {COLUMNS} FROM control WHERE id=?",
                                (request,)).fetchone())
    finally:
        db.close()


def _again(db_path: Path, row: tuple[Any, ...], pid: int | None = None) -> int:
    """A saved signed row inserted again (on `pid`, if given)."""
    verb, was, created, arg, sig = row
    return _insert(db_path, verb, was if pid is None else pid, created, arg, sig)


def _refused(kernel: Any, request: int, pid: int, code: str, why: str) -> None:
    """Applied, the request was refused: its answer typed, and on the record with why."""
    kernel.controls.apply()
    answer = kernel.store.control_result(request)
    assert answer is not None and answer["error"] == code and why in answer["message"], answer
    refusals = [r for r in kernel.audit(pid)
                if r["syscall"] == CONTROL_RECORD and r["phase"] == "rejected"]
    assert refusals and refusals[-1]["detail"]["via"] == "store", refusals
    assert refusals[-1]["detail"]["error"] == code
    assert why in refusals[-1]["detail"]["message"]


def _signals(kernel: Any, pid: int) -> list[str]:
    return [r["detail"]["signal"] for r in kernel.audit(pid)
            if r["syscall"] == "proc.signal" and r["phase"] == "admin"]


async def _paused(kernel: Kernel) -> int:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=[])
    kernel.pause(pid)
    assert kernel.process_info(pid)["state"] == "paused"
    return pid


async def applied_then_paused(db_path: Path) -> tuple[int, tuple[Any, ...]]:
    """A process the operator resumed by a signed request, then paused again: its pid, and the
    request's row as saved by a writer who means to insert it again."""
    async with Kernel.open(db_path) as kernel:
        pid = await _paused(kernel)
        genuine = kernel.store.add_control("resume", pid)
        kernel.controls.apply()
        saved = _row(db_path, genuine)
        kernel.pause(pid)
    return pid, saved


async def test_a_forged_resume_does_not_lift_the_operators_pause(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        pid = await _paused(kernel)
        request = _insert(db_path, "resume", pid, time.time())
        _refused(kernel, request, pid, "NOT_CAPABLE", "not signed")
        assert kernel.process_info(pid)["state"] == "paused"
        assert _signals(kernel, pid) == ["pause"]


async def test_a_request_signed_by_a_key_not_trusted_is_refused(
        db_path: Path, tmp_path: Path) -> None:
    stranger = AuditKey.open(tmp_path / "stranger" / "audit.key")  # (made: no one trusts it)
    async with Kernel.open(db_path) as kernel:
        pid = await _paused(kernel)
        created = time.time()
        sig = control_sig.sign(stranger, kernel.store.identity, "resume", pid, None, created)
        request = _insert(db_path, "resume", pid, created, None, sig)
        _refused(kernel, request, pid, "NOT_CAPABLE", "does not trust")
        assert kernel.process_info(pid)["state"] == "paused"
        # (one signed with a trusted key but altered: its verb)
        row = _row(db_path, request)
        sig = control_sig.sign(AuditKey.open(), kernel.store.identity, "pause", pid, None,
                               created)
        altered = _insert(db_path, "resume", pid, row[2], None, sig)
        _refused(kernel, altered, pid, "NOT_CAPABLE", "does not hold")
        assert kernel.process_info(pid)["state"] == "paused"


async def test_a_signed_resume_inserted_again_is_refused_on_any_pid(db_path: Path) -> None:
    """The writer saved the operator's genuine `resume` row; after the operator paused again,
    it inserts it again, and its signature onto another paused process."""
    async with Kernel.open(db_path) as kernel:
        pid = await _paused(kernel)
        other = kernel.spawn("agent", caps=[])
        kernel.pause(other)
        genuine = kernel.store.add_control("resume", pid)  # (signed: the operator's own)
        kernel.controls.apply()
        assert kernel.store.control_result(genuine) == {"applied": True}
        saved = _row(db_path, genuine)
        kernel.pause(pid)
        _refused(kernel, _again(db_path, saved), pid, "CONFLICT", "applied before")
        assert kernel.process_info(pid)["state"] == "paused"
        _refused(kernel, _again(db_path, saved, other), other, "NOT_CAPABLE", "does not hold")
        assert kernel.process_info(other)["state"] == "paused"
        assert _signals(kernel, pid) == ["pause", "resume", "pause"]


async def test_the_evidence_is_the_chains_the_next_broker_refuses_the_copy_too(
        db_path: Path) -> None:
    """The broker that applied it is gone, and the writer empties the `control` table: the
    nonce applied is in the chain's record, which the next broker reads."""
    pid, saved = await applied_then_paused(db_path)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("DELETE FROM control")
    db.close()
    copy = _again(db_path, saved)  # (applied at the next open, before any step)
    async with Kernel.open(db_path) as kernel:
        answer = kernel.store.control_result(copy)
        assert answer["error"] == "CONFLICT" and "applied before" in answer["message"], answer
        assert kernel.process_info(pid)["state"] == "paused"
        assert kernel.verify_audit()[1] == []


async def test_another_stores_request_is_refused(db_path: Path, tmp_path: Path) -> None:
    """The same operator (one key) runs two stores: a request made for one, copied into the
    other, is refused there."""
    elsewhere = open_store(tmp_path / "other.db")
    try:
        pid_there = elsewhere.insert_process(parent=None, image="a", version="1",
                                             state="paused", root="/", cwd="/")
        made = elsewhere.add_control("resume", pid_there)
    finally:
        elsewhere.close()
    saved = _row(tmp_path / "other.db", made)
    async with Kernel.open(db_path) as kernel:
        pid = await _paused(kernel)
        assert pid == pid_there
        _refused(kernel, _again(db_path, saved), pid, "NOT_CAPABLE", "another store")
        assert kernel.process_info(pid)["state"] == "paused"


async def test_a_stale_request_is_refused(db_path: Path) -> None:
    """A signed request older than the window (one saved, never inserted before), or made
    ahead of the broker's clock by more than it."""
    async with Kernel.open(db_path) as kernel:
        pid = await _paused(kernel)
        for created in (time.time() - WINDOW - 60, time.time() + WINDOW + 60):
            sig = control_sig.sign(AuditKey.open(), kernel.store.identity, "resume", pid,
                                   None, created)
            request = _insert(db_path, "resume", pid, created, None, sig)
            _refused(kernel, request, pid, "CONFLICT", "stale")
            assert kernel.process_info(pid)["state"] == "paused"


async def test_the_operators_own_request_still_resumes(db_path: Path) -> None:
    """The neighbour: the request `add_control` signs with the writer's key is applied, on the
    record with its key and nonce."""
    async with Kernel.open(db_path) as kernel:
        pid = await _paused(kernel)
        kernel.store.add_control("resume", pid)
        kernel.controls.apply()
        assert kernel.process_info(pid)["state"] == "runnable"
        assert _signals(kernel, pid) == ["pause", "resume"]
        [taken] = [r for r in kernel.audit(pid) if r["syscall"] == CONTROL_RECORD]
        assert taken["phase"] == "admin" and taken["detail"]["key"] == kernel.store.signer
        assert control_sig.parse(_row(db_path, 1)[4]).nonce == taken["detail"]["nonce"]
