"""Red team 19 on the signed control requests (`broker.kernel.control_requests`, red team 15):
a database writer without the key replays, forges and malforms the `control` rows.

LOW, fixed: the broker forgot a spent nonce once its request was no longer fresh by the clock
of the moment, so a broker clock stepped ahead (an operator's request taken meanwhile) and
then set back forgot the nonces it had admitted, and a saved copy of one, fresh again by the
corrected clock, was applied a second time. Now a nonce kept is kept while the broker runs.
LOW, fixed: `libos pause` with no broker said "applied when one opens"; past the window it is
refused as stale, and the note now says so.
LOW, fixed (lane ctlbreak): the nonces admitted are read from the chain, so a writer who
deleted (or edited) the `control.request` record and let the next broker open inside the
window had the copy applied, found only by `libos audit --verify`. Now a request is admitted
only while the chain is whole over the records it could have been admitted in
(`tests/broker/kernel/test_control_break_window.py`).
LOW, fixed (lane storeid): a store named itself by its path, so a store removed and made again
at that path within the window applied a request left for the old one, to its own process 1.
Now a request names the store by its path and its chain's first record
(`DurableState.identity`; both backends, the real CLI, and the old first record copied in:
`tests/broker/kernel/test_store_made_again.py`).
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

import trio

from broker import Kernel
from broker.kernel.control_requests import WINDOW
from broker.store.audit import CONTROL_RECORD
from tests.broker.kernel.test_forged_control_redteam15 import (
    _again,
    _insert,
    _paused,
    _refused,
    _row,
    _signals,
    applied_then_paused,
)
from tests.conftest import open_image


class SteppedClock:
    """The broker's wall clock, which an administrator (or NTP) steps."""

    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(0)


async def test_a_copy_is_refused_after_the_brokers_clock_was_set_back(db_path: Path) -> None:
    clock = SteppedClock()
    async with Kernel.open(db_path, clock=clock) as kernel:
        pid = await _paused(kernel)
        genuine = kernel.store.add_control("resume", pid)
        kernel.controls.apply()
        assert kernel.store.control_result(genuine) == {"applied": True}
        saved = _row(db_path, genuine)
        kernel.pause(pid)
        clock.t += 3600  # stepped an hour ahead; the operator pauses another process
        other = kernel.spawn("agent", caps=[])
        kernel.store.add_control("pause", other)
        kernel.controls.apply()
        assert kernel.process_info(other)["state"] == "paused"
        clock.t -= 3600  # set right again: the saved resume is fresh by this clock
        _refused(kernel, _again(db_path, saved), pid, "CONFLICT", "applied before")
        assert kernel.process_info(pid)["state"] == "paused"
        assert _signals(kernel, pid) == ["pause", "resume", "pause"]
        kernel.store.add_control("resume", pid)  # the neighbour: the operator's own, applied
        kernel.controls.apply()
        assert kernel.process_info(pid)["state"] == "runnable"


async def test_malformed_signature_columns_are_refused_typed(db_path: Path) -> None:
    """Types and sizes a writer may put in `sig` (and `created`): each refused NOT_CAPABLE in
    its row and on the record, no traceback; the operator's own request still applied."""
    async with Kernel.open(db_path) as kernel:
        pid = await _paused(kernel)
        template = _row(db_path, kernel.store.add_control("pause", pid))[4]
        db = sqlite3.connect(db_path, isolation_level=None)
        db.execute("DELETE FROM control")  # (the template: a pause, never taken)
        db.close()
        key, store, nonce, signature = template.split(" ")
        sigs = [b"\x00" * 100, 12345, 1.5, "x" * 2_000_000, "é" * 64, "",
                f"{key} {store} {nonce} {signature.upper()}",  # (same bytes, other text)
                f"{key.upper()} {store} {nonce} {signature}",
                f"{key} {store} {nonce} {signature} ", f"{key}  {store} {nonce} {signature}",
                f"{key} {store} {nonce} {'0' * 128}", f"{'zz' * 32} {store} {nonce} {signature}"]
        for sig in sigs:
            request = _insert(db_path, "resume", pid, time.time(), None, sig)  # type: ignore[arg-type]
            _refused(kernel, request, pid, "NOT_CAPABLE", "")
        for created in ("abc", b"\x01", 1e308, -1.0):
            request = _insert(db_path, "resume", pid, created, None, template)  # type: ignore[arg-type]
            _refused(kernel, request, pid, "NOT_CAPABLE", "does not hold")
        assert kernel.process_info(pid)["state"] == "paused"
        assert _signals(kernel, pid) == ["pause"]
        kernel.store.add_control("resume", pid)
        kernel.controls.apply()
        assert kernel.process_info(pid)["state"] == "runnable"


async def test_a_copy_after_its_record_was_deleted_is_refused_by_the_next_broker(
        db_path: Path) -> None:
    pid, saved = await applied_then_paused(db_path)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("DELETE FROM audit WHERE syscall = ?", (CONTROL_RECORD,))
    db.close()
    copy = _again(db_path, saved)
    async with Kernel.open(db_path) as kernel:
        assert kernel.verify_audit()[1]  # (the deletion is found)
        _refused(kernel, copy, pid, "CONFLICT", "the audit chain is broken at record")
        assert kernel.process_info(pid)["state"] == "paused"


async def test_a_request_for_the_store_once_at_this_path_is_refused(db_path: Path) -> None:
    """The operator's `libos kill 1`, left untaken when the store was removed; the writer
    inserts it into the store made again at the same path, whose process 1 is another."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
        saved = _row(db_path, kernel.store.add_control("kill", pid))
    for made in db_path.parent.iterdir():
        if made.name.startswith(db_path.name):
            made.unlink()
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        assert kernel.spawn("agent", caps=[]) == pid
        _refused(kernel, _again(db_path, saved), pid, "NOT_CAPABLE", "another store")
        assert kernel.process_info(pid)["state"] != "killed"


async def test_a_queued_request_says_it_lapses_and_does(db_path: Path) -> None:
    """LOW, fixed: `libos pause` with no broker holding the store said its request would be
    "applied when one opens"; one that opens after the window refuses it as stale. The note
    now says so, and the next broker does so (a request that waited too long is no order)."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[])
    done = await trio.run_process(
        [sys.executable, "-m", "broker.cli", "pause", str(pid), "--db", str(db_path),
         "--wait", "0.2"], capture_stdout=True, capture_stderr=True, check=False)
    said = " ".join(done.stdout.decode().split())
    assert done.returncode == 0, done.stderr.decode()
    assert "queued" in said and "within 300 s, else refused as stale" in said, said
    clock = SteppedClock()
    clock.t += WINDOW + 60  # the next broker opens six minutes later
    async with Kernel.open(db_path, clock=clock) as kernel:
        answer = kernel.store.control_result(1)
        assert answer is not None and answer["error"] == "CONFLICT", answer
        assert "stale" in answer["message"]
        assert kernel.process_info(pid)["state"] != "paused"
