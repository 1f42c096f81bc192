"""Red team 30: a peer's labelled append in flight at this broker's open (its intent walked
by the open's walk, its effect after this broker's replace) keeps its label (invariant 19,
DESIGN §9 "Labels are coarse and beside the chain"). The narrowing kept the labels of writes
in flight at the replace only if their intent was walked after the open: one begun before a
reopen was missed, and the token the peer appended read as public (exported)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel
from broker.store.audit import INTENT, OUTCOME, AuditRecord, StoredRecord
from broker.store.connection import dump_json
from broker.store.data_labels import FILE, MAX_IN_FLIGHT, DataLabels
from broker.store.recordsig import MARKER
from tests.broker.kernel.test_label_columns_redteam import _refused
from tests.broker.kernel.test_label_columns_redteam21 import _forge_beside, secret_written
from tests.broker.kernel.test_label_narrowing_race import _Peer
from tests.broker.kernel.test_labels import EXPORT, _agent
from tests.broker.store.conftest import raw


async def token_kept_secret(a: Kernel, fs: Path,
                            labels: frozenset[str] = frozenset({"secret"})) -> None:
    """The peer's append landed in /work/f.txt and reads labelled: its export refused."""
    assert (fs / "work" / "f.txt").read_text() == "xtok-123"
    reader = await _agent(a, EXPORT)
    assert await a.call_tool(reader, "read_file", {"path": "/work/f.txt"}) == "xtok-123"
    assert "secret" in a.process(reader).label
    await _refused(a, reader, "xtok-123", labels)


async def test_a_peers_append_in_flight_at_the_open_keeps_its_label(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        await secret_written(a)
    peer = _Peer(monkeypatch, pg_database, fs, held=True)
    peer.start()  # (b's append: its intent recorded, its effect held)
    assert await trio.to_thread.run_sync(peer.at_effect.wait, 60)
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:  # (a reopens)
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        await trio.to_thread.run_sync(peer.finish)  # (b's effect after a's replace)
        await token_kept_secret(a, fs)
    assert not (fs / "exports" / "x").exists()


def _intent_of_peers_append(dsn: str) -> int:
    with raw(dsn) as db:
        [(seq,)] = db.execute(
            "SELECT seq FROM audit WHERE syscall = 'fs.write' AND phase = 'intent' "
            "ORDER BY seq DESC LIMIT 1", ()).fetchall()
    return int(seq)


async def test_a_forged_outcome_does_not_end_a_peers_append_in_flight(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database writer without the key forges the outcome of b's append in flight (its
    effect still to come), so that a's replace would drop its label: the outcome is not
    signed (`recordsig.SIGNED_OUTCOMES`), the append stays in flight, and its token still
    reads secret (and does not export)."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        await secret_written(a)
        peer = _Peer(monkeypatch, pg_database, fs, held=True)
        peer.start()
        assert await trio.to_thread.run_sync(peer.at_effect.wait, 60)
        _forge_beside(pg_database, AuditRecord(
            phase=OUTCOME, syscall="fs.write", pid=1, resource="/work/f.txt",
            detail={"ok": True, "intent": _intent_of_peers_append(pg_database), "result": 1}))
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        await trio.to_thread.run_sync(peer.finish)
        await token_kept_secret(a, fs)
    assert not (fs / "exports" / "x").exists()


def _strip_signature(dsn: str, seq: int) -> None:
    with raw(dsn) as db:
        db.execute("UPDATE audit SET sig = NULL WHERE seq = ?", (seq,))


@pytest.mark.parametrize("signature", ["kept", "stripped"])
async def test_a_peers_genuine_outcome_ends_its_append_and_a_replace_narrows(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        signature: str) -> None:
    """The neighbour: b's append done (its outcome signed by b's key), a's replace after it
    narrows the file to its writer's (public), and the file exports. Its outcome's
    signature stripped by a writer, the append stays in flight to a's walk and the replace
    keeps its labels (over-labelled, failing closed)."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        await secret_written(a)
        _Peer(monkeypatch, pg_database, fs, held=False).finish()
        intent = _intent_of_peers_append(pg_database)
        with raw(pg_database) as db:
            [(outcome, sig)] = [(seq, sig) for seq, sig, detail in db.execute(
                "SELECT seq, sig, detail FROM audit WHERE syscall = 'fs.write' AND phase ="
                " 'outcome'", ()).fetchall() if json.loads(detail).get("intent") == intent]
        assert sig is not None  # (b's, over the outcome's seq and hash)
        if signature == "stripped":
            _strip_signature(pg_database, outcome)
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        reader = await _agent(a, EXPORT)
        assert await a.call_tool(reader, "read_file", {"path": "/work/f.txt"}) == "x"
        if signature == "stripped":
            assert "secret" in a.process(reader).label
            await _refused(a, reader, "x")
        else:
            assert a.process(reader).label == frozenset()
            await a.call_tool(reader, "write_file", {"path": "/exports/x", "data": "x"})
    assert (fs / "exports" / "x").exists() is (signature == "kept")


def _write(seq: int, path: str, labels: list[str], **args: Any) -> StoredRecord:
    detail = {"args": {"path": path, "data": "d", **args}, "labels": labels}
    return StoredRecord(seq, 0.0, AuditRecord(phase=INTENT, syscall="fs.write", pid=1,
                                              resource=path, detail=detail),
                        dump_json(detail), "", "")


def _record(seq: int, record: AuditRecord, sig: str | None = None) -> StoredRecord:
    return StoredRecord(seq, 0.0, record, dump_json(record.detail), "", f"h{seq}", sig)


def test_past_the_marker_only_a_signed_outcome_ends_a_write_in_flight() -> None:
    """Before the chain's `audit.signed` marker an outcome ends its write in flight (an older
    broker's, unsigned); past it only one whose signature holds (the checker: a shared
    walk's `RecordSignatures.holds`); without a checker (a single writer's walk), any."""
    def outcome(seq: int, intent: int, sig: str | None = None) -> StoredRecord:
        return _record(seq, AuditRecord(phase=OUTCOME, syscall="fs.write", pid=1,
                                        resource="/work/f.txt",
                                        detail={"ok": True, "intent": intent}), sig)

    walk = DataLabels(signed=lambda stored: stored.sig == "trusted")
    walk.see(_write(1, "/work/f.txt", ["secret"], append=True))
    walk.see(outcome(2, 1))
    assert not walk._in_flight
    walk.see(_record(3, AuditRecord(phase="admin", syscall=MARKER, pid=None, detail={})))
    walk.see(_write(4, "/work/f.txt", ["secret"], append=True))
    walk.see(outcome(5, 4))
    walk.see(outcome(6, 4, "forged"))
    assert list(walk._in_flight) == [4]
    walk.see(outcome(7, 4, "trusted"))
    assert not walk._in_flight
    single = DataLabels()
    for stored in (_record(1, AuditRecord(phase="admin", syscall=MARKER, pid=None, detail={})),
                   _write(2, "/work/f.txt", ["secret"], append=True), outcome(3, 2)):
        single.see(stored)
    assert not single._in_flight


def test_a_flood_of_intents_no_outcome_follows_is_bounded_and_keeps_labels() -> None:
    """A writer's flood of labelled intents with no outcome (a peer's, after the open) keeps
    `MAX_IN_FLIGHT` of them one by one; the oldest's labels stay with its file (a replace of
    it keeps them: over-labelled, never under)."""
    walk = DataLabels()
    walk.close(adding=True)
    walk.see(_write(1, "/work/f.txt", ["secret"], append=True))
    for seq in range(2, MAX_IN_FLIGHT + 12):
        walk.see(_write(seq, f"/work/g{seq}.txt", ["x"], append=True))
    assert len(walk._in_flight) <= MAX_IN_FLIGHT
    replace = MAX_IN_FLIGHT + 20
    walk.see(_write(replace, "/work/f.txt", []))
    assert walk.labels((FILE, "/work/f.txt"), lambda seq: seq >= replace) == {"secret"}


def test_replaces_after_the_open_keep_a_label_once_not_per_write() -> None:
    """A labelled process replacing a file again and again (a peer's, after the open): the
    walk keeps a label of the file at the latest record that carries it, not one seq per
    write (memory grows with the files and their labels, not the records:
    `StretchFirsts`); the label still counts from each replace on."""
    walk = DataLabels()
    walk.see(_write(1, "/work/f.txt", ["secret"]))
    walk.close(adding=True)
    for seq in range(2, 2002):
        walk.see(_write(seq, "/work/f.txt", ["secret"]))
    assert len(walk._all._seen[(FILE, "/work/f.txt")]["secret"]) <= 2
    assert walk.labels((FILE, "/work/f.txt"), lambda seq: seq >= 2001) == {"secret"}
