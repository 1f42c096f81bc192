"""`libos ps` keeps its walk of the chain between runs (`broker.store.walk_memory`), and a
database writer without the key attacks what it keeps: each forgery is caught or ignored (the
chain walked whole, as with nothing kept), and `ps` shows what a full walk shows. Neighbour:
a second `ps` reads only what was appended since, and shows the same."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel
from broker.cli import main as cli_main
from broker.store import AuditRecord
from broker.store.sqlite import SQLiteStore
from broker.store.walk_memory import MAX_KEPT, WalkMemory
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.broker.kernel.test_process_revived_redteam import REVIVE

NOTES = 400  # records beside the processes': a full walk reads them all


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The audit rows the store reads from here on ([count]: reset it at will)."""
    read = [0]
    rows_of = SQLiteStore._audit_rows

    def counted(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        for row in rows_of(self, *args, **kwargs):
            read[0] += 1
            yield row

    monkeypatch.setattr(SQLiteStore, "_audit_rows", counted)
    return read


async def made(db: Path) -> tuple[int, int]:
    """A store with a live process and a killed one set live again by a writer (`ps` shows
    it ended by its record), and many records."""
    async with Kernel.open(db) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        live = kernel.spawn("a", caps=["clock:*:read"])
        revived = kernel.spawn("a", caps=["clock:*:read"])
        kernel.kill(revived)
        for i in range(NOTES):
            kernel.store.append_audit(AuditRecord(phase="admin", syscall="note", detail={"i": i}))
    edit(db, REVIVE, (revived,))
    return live, revived


def ps(db: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert cli_main(["ps", "--json", "--db", str(db)]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def kept_at(db: Path) -> Path:
    path = WalkMemory.path_of(db)
    assert path is not None
    return path


def fresh(db: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """What `ps` shows with nothing kept (a full walk)."""
    kept_at(db).unlink(missing_ok=True)
    return ps(db, capsys)


async def test_a_second_ps_reads_only_what_was_appended(
        db_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    live, revived = await made(db_path)
    read = count_reads(monkeypatch)
    first = ps(db_path, capsys)
    assert read[0] > NOTES  # (the first walks it whole)
    assert {p["pid"]: "ended_by" in p for p in first} == {live: False, revived: True}
    assert os.stat(kept_at(db_path)).st_mode & 0o777 == 0o600
    async with Kernel.open(db_path) as kernel:  # (more records, under the anchor: an end)
        kernel.kill(live)
    read[0] = 0
    second = ps(db_path, capsys)
    assert read[0] < 50, read[0]
    assert [p["state"] for p in second if p["pid"] == live] == ["killed"]
    assert second == fresh(db_path, capsys)


def _edited(path: Path, other: Path) -> None:  # (its end of the revived process taken out)
    mac, _, body = path.read_bytes().partition(b"\n")
    kept = json.loads(body)
    kept["ends"]["_acts"] = {"d": []}
    path.write_bytes(mac + b"\n" + json.dumps(kept, separators=(",", ":")).encode())


def _another_stores(path: Path, other: Path) -> None:  # (its MAC holds: this user's)
    shutil.copyfile(kept_at(other), path)


def _oversized(path: Path, other: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(MAX_KEPT + 1)


def _a_link_to_a_file_not_ours(path: Path, other: Path) -> None:
    path.unlink()
    path.symlink_to(other)  # (the other store's database: never written into)


@pytest.mark.parametrize("forge", [_edited, _another_stores, _oversized,
                                   _a_link_to_a_file_not_ours])
async def test_a_forged_kept_walk_is_ignored(
        db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], forge: Any) -> None:
    await made(db_path)
    other = tmp_path / "other.db"
    await made(other)
    shown = ps(db_path, capsys)
    ps(other, capsys)
    before = other.read_bytes()
    forge(kept_at(db_path), other)
    read = count_reads(monkeypatch)
    assert ps(db_path, capsys) == shown  # (the revived row still shown ended)
    assert read[0] > NOTES, read[0]  # (walked it whole)
    assert other.read_bytes() == before
    assert not kept_at(db_path).is_symlink()  # (kept again, in a file of its own)
    read[0] = 0
    assert ps(db_path, capsys) == shown
    assert read[0] < 50, read[0]


def _record_cut(db: Path, seq: int) -> None:
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM audit WHERE seq=?", (seq,))
    con.close()


def _record_rewritten(db: Path, seq: int) -> None:  # (edited in place, another hash)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE audit SET detail='{\"i\":-1}', hash=? WHERE seq=?", ("0" * 64, seq))
    con.close()


@pytest.mark.parametrize("change", [_record_cut, _record_rewritten])
async def test_a_kept_head_cut_or_rewritten_is_walked_whole(
        db_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], change: Any) -> None:
    """The head the kept walk covers is gone or holds another hash (the anchor, later, still
    checks): the chain is walked whole, and shows the break as a full walk does."""
    await made(db_path)
    ps(db_path, capsys)
    head = json.loads(kept_at(db_path).read_bytes().partition(b"\n")[2])["head"][0]
    async with Kernel.open(db_path) as kernel:  # (the anchor moves on past it)
        for _ in range(5):
            kernel.store.append_audit(AuditRecord(phase="admin", syscall="note", detail={}))
    change(db_path, head)
    read = count_reads(monkeypatch)
    shown = ps(db_path, capsys)
    assert read[0] > NOTES, read[0]
    assert shown == fresh(db_path, capsys)


async def test_an_older_kept_walk_put_back_walks_on_from_it(
        db_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A stale walk (genuine, older): its head is on the chain still, so the records after it
    are walked, as many as a full walk would read past it."""
    live, _ = await made(db_path)
    ps(db_path, capsys)
    older = kept_at(db_path).read_bytes()
    async with Kernel.open(db_path) as kernel:
        kernel.kill(live)
    ps(db_path, capsys)
    kept_at(db_path).write_bytes(older)
    shown = ps(db_path, capsys)
    assert [p["state"] for p in shown if p["pid"] == live] == ["killed"]
    assert shown == fresh(db_path, capsys)


async def test_a_record_forged_after_the_kept_head_counts_as_in_a_full_walk(
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A kill of the live process appended past the signed head by a writer without the key:
    walked (it lies after the kept head), it ends nothing, and the page says it is there."""
    live, _ = await made(db_path)
    ps(db_path, capsys)
    append_past_head(db_path, AuditRecord(phase="admin", syscall="proc.signal", pid=live,
                                          detail={"signal": "kill"}))
    assert cli_main(["ps", "--db", str(db_path)]) == 0
    assert "1 audit record(s) past the signed anchor" in capsys.readouterr().out
    shown = ps(db_path, capsys)
    assert "ended_by" not in next(p for p in shown if p["pid"] == live)
    assert shown == fresh(db_path, capsys)


async def test_a_record_edited_in_place_below_the_kept_head_is_not_seen(
        db_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The gap DESIGN §9 names: an edit below the kept head that leaves the head's hash (the
    record's hash column left) is not read again by `ps`, which shows the chain as it was
    walked; `libos audit --verify` names it."""
    await made(db_path)
    shown = ps(db_path, capsys)
    with sqlite3.connect(db_path) as con:
        con.execute("UPDATE audit SET detail='{\"i\":-1}' WHERE seq=10")
    con.close()
    read = count_reads(monkeypatch)
    assert ps(db_path, capsys) == shown
    assert read[0] < 50, read[0]
    assert cli_main(["audit", "--verify", "--db", str(db_path)]) == 1
    assert "record 10: content does not match its hash: edited" in capsys.readouterr().out
