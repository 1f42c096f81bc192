"""Events written together (a batch of state events, a process's end carrying those batched
before it) are numbered as one at a time would be: each seq the one its row is stored under,
in the order emitted, after every earlier one; and next to the largest seq a store can hold
they are still stored, each under the seq given back (SQLite numbers them itself there)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from broker.store.opening import open_store


def _stored(store: object) -> dict[int, tuple[int | None, str, dict[str, object]]]:
    return {e["seq"]: (e["pid"], e["kind"], e["data"])
            for e in store.events()}  # type: ignore[attr-defined]


def test_a_batch_of_events_gets_the_seqs_it_is_stored_under(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        first = store.append_events([(None, "note", {"n": 0})])
        batch = [(None, "state", {"n": n, "s": "é\udc80"[: n % 2]}) for n in range(1, 6)]
        seqs = store.append_events(batch)
        assert seqs == list(range(first[0] + 1, first[0] + 6))
        stored = _stored(store)
        assert [stored[seq] for seq in seqs] == [
            (pid, kind, {"n": data["n"], "s": data["s"]}) for pid, kind, data in batch]
        later = store.append_events([(None, "note", {"n": 9})] * 3)
        assert later[0] == seqs[-1] + 1 and later == sorted(later)
    finally:
        store.close()


def test_a_batch_next_to_the_largest_seq_is_stored_all_the_same(db_path: Path) -> None:
    store = open_store(db_path)
    store.close()
    with sqlite3.connect(db_path) as db:  # (an old store whose seqs ran up to the last)
        db.execute("INSERT INTO events(seq, ts, pid, kind, data) VALUES (?, 0, NULL, 'x', '1')",
                   ((1 << 63) - 2,))
    store = open_store(db_path)
    try:
        batch = [(None, "note", {"n": n}) for n in range(4)]
        seqs = store.append_events(batch)
        stored = _stored(store)
        assert len(set(seqs)) == 4
        assert [stored[seq] for seq in seqs] == batch
    finally:
        store.close()
