"""Red team 33: a takeover's `outcome unknown` of a peer's labelled append in flight.

Past the chain's `audit.signed` marker only an `fs.write` outcome a trusted key signed ends
a write in flight to the labels' walk (`DataLabels._ends_write`). But a genuine, signed
outcome need not mean the effect is done: a broker that takes over a process whose lease
expired (its broker frozen, or a database writer who set the lease row's expiry to 0)
records `outcome unknown` for its open intents (`recovery.close_open_intents`), signed by
the taker's key. The frozen broker's effect on the files is not fenced (only its store
writes are), so it may still land after a replace that this outcome let narrow the file:
the appended secret then reads as public, and exports."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio

from broker import Kernel
from broker.store.audit import OUTCOME, AuditRecord, StoredRecord
from broker.store.connection import dump_json
from broker.store.data_labels import DataLabels
from broker.store.leases import LeaseLost
from broker.store.recordsig import MARKER
from tests.broker.kernel.test_label_columns_redteam21 import BROKEN, secret_written
from tests.broker.kernel.test_label_narrowing_race import _Peer
from tests.broker.kernel.test_label_narrowing_reopen_rt30 import (
    _intent_of_peers_append,
    _record,
    _write,
    token_kept_secret,
)
from tests.broker.kernel.test_labels import _agent
from tests.broker.store.conftest import raw


def _unknown_outcome_of(dsn: str, intent: int) -> tuple[int, str | None] | None:
    with raw(dsn) as db:
        rows = db.execute("SELECT seq, sig, detail FROM audit WHERE syscall = 'fs.write' AND"
                          " phase = 'outcome'", ()).fetchall()
    for seq, sig, detail in rows:
        found = json.loads(detail)
        if found.get("intent") == intent and found.get("unknown") is True:
            return int(seq), sig
    return None


def _outcome_written(dsn: str, intent: int) -> tuple[int, str | None]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _unknown_outcome_of(dsn, intent)
        if found is not None:
            return found
        time.sleep(0.1)
    raise AssertionError("no takeover outcome")


@pytest.mark.parametrize("expired", ["by a database writer", "b frozen past its lease"])
async def test_a_takeovers_unknown_outcome_does_not_end_a_peers_append_in_flight(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        expired: str) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        await secret_written(a)
        peer = _Peer(monkeypatch, pg_database, fs, held=True)
        peer.start()  # (b's append: its intent recorded, its effect held: b is frozen)
        assert await trio.to_thread.run_sync(peer.at_effect.wait, 60)
        intent = _intent_of_peers_append(pg_database)
        if expired == "by a database writer":  # (else b's loop, held, renews nothing)
            with raw(pg_database) as db:
                db.execute("UPDATE leases SET expires = 0 WHERE holder = 'b'", ())
        # a takes the process over and records the append's outcome unknown, signed by a.
        _, sig = await trio.to_thread.run_sync(_outcome_written, pg_database, intent)
        assert sig is not None
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        with pytest.raises(LeaseLost):  # (b's effect lands after the replace; its outcome
            await trio.to_thread.run_sync(peer.finish)  # is fenced off: the lease is a's)
        await token_kept_secret(a, fs)
    assert not (fs / "exports" / "x").exists()


def test_past_the_marker_a_signed_unknown_outcome_leaves_a_write_in_flight() -> None:
    """The walk: a trusted `outcome unknown` past the marker leaves the write in flight (a
    signed one that tells the effect settled, ok or not, ends it); before the marker, and in
    a single writer's walk, any outcome ends it, as before."""
    def outcome(seq: int, intent: int, **detail: object) -> StoredRecord:
        return _record(seq, AuditRecord(phase=OUTCOME, syscall="fs.write", pid=1,
                                        resource="/work/f.txt",
                                        detail={"intent": intent, **detail}), "trusted")

    marker = _record(3, AuditRecord(phase="admin", syscall=MARKER, pid=None, detail={}))
    walk = DataLabels(signed=lambda stored: stored.sig == "trusted")
    walk.see(_write(1, "/work/f.txt", ["secret"], append=True))
    walk.see(outcome(2, 1, ok=False, unknown=True))  # (before the marker: an older broker's)
    assert not walk._in_flight
    walk.see(marker)
    walk.see(_write(4, "/work/f.txt", ["secret"], append=True))
    walk.see(outcome(5, 4, ok=False, unknown=True, error="OUTCOME_UNKNOWN"))
    assert list(walk._in_flight) == [4]
    walk.see(_write(6, "/work/f.txt", ["secret"], append=True))
    walk.see(outcome(7, 6, ok=False, error="INVALID_ARGUMENT"))  # (settled: it failed)
    walk.see(outcome(8, 4, ok=True, unknown=False))
    assert not walk._in_flight
    single = DataLabels()
    for stored in (marker, _write(4, "/work/f.txt", ["secret"], append=True),
                   outcome(5, 4, ok=False, unknown=True)):
        single.see(stored)
    assert not single._in_flight


def _outcome_of(dsn: str, intent: int) -> tuple[int, str]:
    with raw(dsn) as db:
        rows = db.execute("SELECT seq, detail FROM audit WHERE syscall = 'fs.write' AND"
                          " phase = 'outcome'", ()).fetchall()
    return next((int(seq), detail) for seq, detail in rows
                if json.loads(detail).get("intent") == intent)


async def test_a_signed_outcome_repointed_at_a_peers_append_in_flight_ends_nothing(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database writer edits a peer's genuine, signed outcome of an earlier append to
    name the append in flight, its hash and signature left as they were: the signature
    still holds over the seq and hash, but the record is no longer the one hashed, so the
    walk finds the chain broken there and reads take the label ceiling (the token reads
    secret, and does not export).

    The edit lands before `a` walks the outcome: a walk reads each record once, so one
    walked before the edit was genuine when read (and what it ended was b's earlier
    append: the one in flight stays so, its token secret, without the break). `a`'s trio
    loop is therefore held from b's first append to the edit (each waited for here
    without a checkpoint): else its lease loop takes over b's first process, released at
    b's close, and walks past the outcome first (the flake under load)."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        await secret_written(a)
        _Peer(monkeypatch, pg_database, fs, held=False).finish()  # (b's append, done)
        done, text = _outcome_of(pg_database, _intent_of_peers_append(pg_database))
        peer = _Peer(monkeypatch, pg_database, fs, held=True)
        peer.start()
        assert peer.at_effect.wait(60)  # (not in a worker thread: a's loop stays held)
        assert a.store.chain_links().linked[0] < done  # (not walked by `a` yet)
        detail = {**json.loads(text), "intent": _intent_of_peers_append(pg_database)}
        with raw(pg_database) as db:
            db.execute("UPDATE audit SET detail = ? WHERE seq = ?", (dump_json(detail), done))
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        await trio.to_thread.run_sync(peer.finish)
        await token_kept_secret(a, fs, BROKEN)
    assert not (fs / "exports" / "x").exists()
