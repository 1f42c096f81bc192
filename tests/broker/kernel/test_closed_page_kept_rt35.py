"""Red team 35 on red team 31's fix (a long-lived page's whole-chain read restarts when the
record its last look stopped at is gone or replaced): a database writer who puts one record
that reads as an expiry far past the chain's end and *leaves* it there (the chain then fails
`--verify`, which no page runs) moved the page's mark past every seq the broker appends
next, as before the fix: each request expired since, then set back to pending by the
writer, was listed on the page and an answer to it signed. A whole-chain reader's mark now
stops at the end of the run of records without a gap (what is past it is read, and read
again at the next look)."""

from __future__ import annotations

import time
from pathlib import Path

from broker import Kernel
from broker.approvals.closed import ClosedOnChain
from broker.approvals.stored import StoreApprovals
from broker.store import AuditRecord, SQLiteStore
from tests.broker.kernel.test_shown_args_redteam31 import revived_is_refused
from tests.broker.kernel.test_signed_answers_redteam21 import _exporting
from tests.broker.store.conftest import raw


async def test_a_record_kept_far_past_the_chain_does_not_blind_a_long_lived_page(
        db_path: Path, tmp_path: Path) -> None:
    async with _exporting(db_path, tmp_path, "t", "u") as (kernel, _root, [old, other], done):
        reader = SQLiteStore(db_path, writer=False)
        pages = StoreApprovals(reader, time.time)
        assert len(pages.approvals()) == 2
        with raw(db_path) as db:  # kept: never deleted
            db.execute("INSERT INTO audit (seq, ts, phase, syscall, detail, prev_hash, hash)"
                       " VALUES (?, 0, 'denied', 'x', ?, '', 'forged')",
                       (10**9, '{"request":"apr_none","state":"expired"}'))
        assert len(pages.approvals()) == 2  # (the page looked, the record there)
        kernel.queue._expire([old["id"]])  # (its deadline passed: on the chain)
        assert kernel.store.last_seq() == 10**9  # (the broker appends below it)
        await revived_is_refused(kernel, db_path, pages, old, other, done)
        reader.close()


async def test_a_whole_chain_reader_reads_past_a_kept_far_record_on_both_backends(
        store_at: Path | str) -> None:
    """The mark stops at the end of the run without a gap (`Store.run_end`), on SQLite and
    PostgreSQL: an expiry the broker records after a writer's record kept far past the end
    is read; the writer's own, past the gap, is read too (it closes, never opens)."""
    async with Kernel.open(store_at) as kernel:
        store = kernel.store
        last = store.last_seq()
        assert store.run_end(0) == last and store.run_end(last) == last
        page = ClosedOnChain(whole=True)
        with raw(store_at) as db:
            db.execute("INSERT INTO audit (seq, ts, phase, syscall, detail, prev_hash, hash)"
                       " VALUES (?, 0, 'denied', 'x', ?, '', 'forged')",
                       (10**9, '{"request":"apr_far","state":"expired"}'))
        assert page.state_of(store, "apr_far") == "expired"
        assert store.run_end(0) == last
        store.append_audit(AuditRecord(phase="denied", syscall="host.x", detail={
            "request": "apr_now", "state": "expired", "error": "APPROVAL_DENIED"}))
        assert store.last_seq() == 10**9 and store.run_end(last) == last + 1
        assert page.state_of(store, "apr_now") == "expired"
