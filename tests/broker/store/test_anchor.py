"""The chain's anchor catches what a hash chain alone cannot: records cut off the end, and a
chain written again from scratch; and a broker that opens such a store records it at once."""

from __future__ import annotations

from pathlib import Path

from broker import Kernel
from broker.cli import main as cli
from broker.store import AuditRecord
from broker.store.audit import GENESIS, record_hash
from broker.store.opening import open_store
from tests.broker.store.conftest import raw
from tests.conftest import open_image


async def _history(db: str | Path) -> int:
    async with Kernel.open(db) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["clock:*:read"])
        for _ in range(5):
            await kernel.call_tool(pid, "now", {})
        return kernel.store.head_seq


def _problems(db: str | Path) -> list[str]:
    return open_store(db, writer=False).audit_problems()[1]


async def test_records_cut_off_the_end_are_found(store_at: str | Path) -> None:
    last = await _history(store_at)
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE seq > ?", (last - 3,))
    problems = _problems(store_at)
    assert problems and problems[0].startswith(f"record {last - 2}: missing")
    assert cli(["audit", "--verify", "--db", str(store_at)]) == 1


async def test_a_chain_written_again_is_found(store_at: str | Path) -> None:
    await _history(store_at)
    with raw(store_at) as db:
        rows = db.execute("SELECT seq, ts, pid, inv, tool, phase, syscall, resource, args_hash,"
                          " cap_id, detail FROM audit ORDER BY seq").fetchall()
        prev = GENESIS
        for seq, ts, pid, inv, tool, phase, syscall, resource, ahash, cap, detail in rows:
            # A forger with the database rewrites one detail and recomputes every hash after.
            if seq == 3:
                detail = '{"forged":true}'
            record = AuditRecord(phase, syscall, pid, inv, tool, resource, ahash, cap, {})
            digest = record_hash(seq, ts, record, detail, prev)
            db.execute("UPDATE audit SET detail=?, prev_hash=?, hash=? WHERE seq=?",
                       (detail, prev, digest, seq))
            prev = digest
    problems = _problems(store_at)
    # The rewritten chain is self-consistent; only its anchor shows it was written again
    # (and record 3's result payload, which its forged detail no longer vouches for).
    assert len(problems) == 2 and "written again" in problems[-1]
    assert problems[0] == ("record 3: holds a stored payload that its record does not "
                           "vouch for: planted")


async def test_a_broker_opening_a_cut_chain_records_it_before_going_on(
        store_at: str | Path) -> None:
    last = await _history(store_at)
    with raw(store_at) as db:
        db.execute("DELETE FROM audit WHERE seq > ?", (last - 2,))
    async with Kernel.open(store_at) as kernel:
        pid = kernel.spawn("agent", caps=["clock:*:read"])
        await kernel.call_tool(pid, "now", {})  # appends: the anchor moves on
        _, problems = kernel.verify_audit()
    assert any("a broker opening the store found" in p and "missing" in p for p in problems)
    assert cli(["audit", "--verify", "--db", str(store_at)]) == 1


async def test_an_untouched_store_verifies_across_reopening(store_at: str | Path) -> None:
    await _history(store_at)
    async with Kernel.open(store_at) as kernel:
        assert kernel.verify_audit()[1] == []
    assert _problems(store_at) == []
