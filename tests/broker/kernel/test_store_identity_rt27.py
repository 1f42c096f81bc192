"""Red team 27: a database writer makes a store made again at the same address name itself
as the old one did, so the operator's signed `libos kill 1` left for the old store (whose
process 1 is another) holds for the new one (DESIGN invariant 10, `DurableState.identity`).

- The old first record copied in *below* the new chain (seq 0): the identity read the
  lowest seq, the walk reads from seq 1 on, so nothing was broken and the kill applied.
- The new first record's hash column edited to the old one's while its broker runs (after
  its open walked the chain, before it first named its store): the broker took the edited
  column, and the walk never reads record 1 again, so nothing was broken either.

Both are refused now: a writer's broker names its store by the first record as its open's
walk found it (and a reader by the first record the walk reads)."""

from __future__ import annotations

from pathlib import Path

from broker import Kernel
from broker.lifecycle import State
from broker.store.audit import CONTROL_RECORD
from tests.broker.kernel.test_store_made_again import (
    AUDIT,
    _insert,
    _left_for_the_old_store,
    _libos_kill,
    _make_again,
    old_request_refused_new_kill_applied,
)
from tests.broker.store.conftest import raw
from tests.conftest import open_image


def _old_first(store: Path | str) -> tuple[object, ...]:
    with raw(store) as db:
        return tuple(db.execute(f"SELECT {AUDIT} FROM audit ORDER BY seq LIMIT 1").fetchone())


async def test_the_old_first_record_copied_in_below_the_chain_is_refused(
        store_at: Path | str) -> None:
    pid, saved = await _left_for_the_old_store(store_at)
    first = _old_first(store_at)
    _make_again(store_at)
    async with Kernel.open(store_at) as kernel:
        await open_image(kernel)
        assert kernel.spawn("agent", caps=[]) == pid  # (another process 1)
    with raw(store_at) as db:  # (the writer's row below the chain, as the old first was)
        db.execute(f"INSERT INTO audit({AUDIT}) VALUES ({','.join('?' * len(first))})",
                   (0, *first[1:]))
    async with Kernel.open(store_at) as kernel:
        await old_request_refused_new_kill_applied(kernel, store_at, saved, pid)


async def test_the_first_hash_edited_under_a_running_broker_is_refused(
        store_at: Path | str) -> None:
    pid, saved = await _left_for_the_old_store(store_at)
    old_hash = _old_first(store_at)[AUDIT.split(", ").index("hash")]
    _make_again(store_at)
    async with Kernel.open(store_at) as kernel:
        await open_image(kernel)
        assert kernel.spawn("agent", caps=[]) == pid
        new_hash = _old_first(store_at)[AUDIT.split(", ").index("hash")]
        with raw(store_at) as db:  # (after the open's walk, before the store was named)
            db.execute("UPDATE audit SET hash = ? WHERE seq = 1", (old_hash,))
        request = _insert(store_at, saved)
        kernel.controls.apply()
        answer = kernel.store.control_result(request)
        # (refused as made for another store; or, where no walk had read record 1 before it
        # was edited, as made while the chain broke: either way not applied)
        assert answer is not None and answer.get("error") in ("NOT_CAPABLE", "CONFLICT"), answer
        assert kernel.process_info(pid)["state"] != State.KILLED
        [refusal] = [r for r in kernel.audit(pid) if r["syscall"] == CONTROL_RECORD]
        assert refusal["phase"] == "rejected", refusal
        if answer["error"] == "CONFLICT":
            return  # (a break found: the window's requests are refused, as lane ctlbreak's)
        with raw(store_at) as db:  # (the column put back: nothing for `--verify` to find)
            db.execute("UPDATE audit SET hash = ? WHERE seq = 1", (new_hash,))
        said = await _libos_kill(store_at, pid)  # (the neighbour: the operator's own)
        assert "queued" not in said, said
        assert kernel.process_info(pid)["state"] == State.KILLED
