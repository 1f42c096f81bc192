"""A control request is admitted only while the chain its spent nonces are read from is whole
over the records it could have been admitted in (`ControlRequests._whole_since`, lane
ctlbreak, after red team 19): a writer who takes the record of an applied request away (or
edits it), by a break or by hashing the chain again past its anchor, and inserts a saved copy
within the window, has it refused, typed and on the record, by the next broker. A break
older than that (red team 18's lesson) does not refuse the operator's fresh request.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

from broker import Kernel
from broker.kernel.control_requests import LAG, WINDOW
from broker.store.audit import CONTROL_RECORD, GENESIS, record_hash
from broker.store.opening import open_store
from tests.broker.kernel.test_control_sig_redteam19 import SteppedClock
from tests.broker.kernel.test_forged_control_redteam15 import (
    _again,
    _paused,
    _refused,
    _signals,
    applied_then_paused,
)

BROKEN = "the audit chain is broken at record"


def _hashed_again_without_its_nonce(db_path: Path) -> None:
    """The applied request's record edited (another nonce) and every record hashed again:
    whole link by link; only the signed anchor says which head was the broker's."""
    s = open_store(db_path)
    try:
        rows, prev = [], GENESIS
        for r in list(s.audit_records()):
            text = r.detail_json
            if r.record.syscall == CONTROL_RECORD:
                detail = json.loads(text)
                detail["nonce"] = "0" * 32
                text = json.dumps(detail)
            digest = record_hash(r.seq, r.ts, replace(r.record, detail=json.loads(text)),
                                 text, prev)
            rows.append((text, prev, digest, r.seq))
            prev = digest
        with s.transaction() as db:
            for row in rows:
                db.execute("UPDATE audit SET detail=?, prev_hash=?, hash=? WHERE seq=?", row)
    finally:
        s.close()


async def test_a_copy_after_the_chain_was_hashed_again_is_refused(db_path: Path) -> None:
    pid, saved = await applied_then_paused(db_path)
    _hashed_again_without_its_nonce(db_path)
    copy = _again(db_path, saved)
    async with Kernel.open(db_path) as kernel:
        _refused(kernel, copy, pid, "CONFLICT", BROKEN)
        assert kernel.process_info(pid)["state"] == "paused"
        assert _signals(kernel, pid) == ["pause", "resume", "pause"]


async def test_times_set_back_after_the_deleted_record_do_not_hide_the_break(
        db_path: Path) -> None:
    """The writer also dates every record after the one it removed an hour back, so none
    looks recent: an edited record's time is the writer's, and counts for nothing."""
    pid, saved = await applied_then_paused(db_path)
    db = sqlite3.connect(db_path, isolation_level=None)
    [(seq,)] = db.execute("SELECT seq FROM audit WHERE syscall = ?", (CONTROL_RECORD,))
    db.execute("DELETE FROM audit WHERE seq = ?", (seq,))
    db.execute("UPDATE audit SET ts = ts - 3600 WHERE seq > ?", (seq,))
    db.close()
    copy = _again(db_path, saved)
    async with Kernel.open(db_path) as kernel:
        _refused(kernel, copy, pid, "CONFLICT", BROKEN)
        assert kernel.process_info(pid)["state"] == "paused"


async def test_an_old_break_does_not_refuse_the_operators_fresh_request(db_path: Path) -> None:
    """A record edited well before the window (its records written by a broker whose clock
    read then): the chain is broken there, for good, and `libos audit --verify` says so; the
    operator's requests now are admitted all the same."""
    clock = SteppedClock()
    clock.t -= WINDOW + LAG + 120
    async with Kernel.open(db_path, clock=clock) as kernel:
        pid = await _paused(kernel)
        kernel.spawn("agent", caps=[])  # (a record after the one edited)
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("UPDATE audit SET ts = ts + 1 WHERE seq = (SELECT MAX(seq) FROM audit"
               " WHERE syscall = 'proc.signal')")
    db.close()
    async with Kernel.open(db_path) as kernel:
        assert kernel.verify_audit()[1]  # (the break is found)
        request = kernel.store.add_control("resume", pid)
        kernel.controls.apply()
        assert kernel.store.control_result(request) == {"applied": True}
        assert kernel.process_info(pid)["state"] == "runnable"
        assert _signals(kernel, pid) == ["pause", "resume"]
