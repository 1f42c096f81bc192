"""The walks `libos ps` keeps (`<key dir>/walks/`, one per store location) of stores that are
gone are removed, at most once a day, by a `ps` that keeps one (`broker.store.walk_sweep`):
only walks this user's key MACed, in that directory, never through a link, never a file
replaced since it was read. Neighbour: the walk of a store still there stays, and is taken."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel
from broker.cli import main as cli_main
from broker.store import walk_sweep
from broker.store.keys import KEY_ENV, AuditKey, key_path
from broker.store.walk_memory import WalkMemory

DAY = 24 * 60 * 60


async def _store(db: Path) -> None:
    """A store with a live process: `ps` walks its chain, and keeps the walk."""
    async with Kernel.open(db) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        kernel.spawn("a", caps=["clock:*:read"])


def _ps(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["ps", "--json", "--db", str(db)]) == 0
    assert json.loads(capsys.readouterr().out)


def _walk_of(db: Path) -> Path:
    path = WalkMemory.path_of(db)
    assert path is not None and path.is_file()
    return path


def _macd(key: AuditKey, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    return key.walk_mac(data).encode() + b"\n" + data


def _remove_store(db: Path) -> None:
    for path in db.parent.glob(db.name + "*"):
        path.unlink()


def _sweep_due(walks: Path) -> None:
    """The last sweep a day and a bit ago."""
    past = time.time() - DAY - 60
    os.utime(walks / ".swept", (past, past))


@pytest.fixture
def own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AuditKey:
    monkeypatch.setenv(KEY_ENV, str(tmp_path / "key" / "audit.key"))
    return AuditKey.open(key_path())


async def test_a_gone_stores_walk_is_removed_and_nothing_else(
        tmp_path: Path, own_key: AuditKey, capsys: pytest.CaptureFixture[str]) -> None:
    kept, gone = tmp_path / "kept.db", tmp_path / "gone.db"
    await _store(kept)
    await _store(gone)
    _ps(kept, capsys)
    _ps(gone, capsys)
    kept_walk, gone_walk = _walk_of(kept), _walk_of(gone)
    walks = kept_walk.parent
    _ps(kept, capsys)  # (the first sweep: nothing gone)
    assert (walks / ".swept").is_file() and gone_walk.is_file()
    _remove_store(gone)
    # Beside it, what is not ours to remove: a file no key of ours MACed, a link (to a walk of
    # ours, of a store gone, kept outside the directory), a walk another key MACed.
    names = iter(f"{n:064x}" for n in range(1, 10))
    foreign = walks / next(names)
    foreign.write_bytes(b"not a walk\n{}")
    outside = tmp_path / "outside"
    shutil.copy(gone_walk, outside)
    link = walks / next(names)
    link.symlink_to(outside)
    other_key = AuditKey.open(tmp_path / "other" / "audit.key")
    others = walks / next(names)
    others.write_bytes(_macd(other_key, {"version": 2, "location": str(gone)}))
    old_version = walks / next(names)  # (ours, of a version no broker here reads)
    old_version.write_bytes(_macd(own_key, {"version": 1, "store": "x"}))
    newer = walks / next(names)  # (ours, of a newer broker's version: left to it)
    newer.write_bytes(_macd(own_key, {"version": 99, "location": str(gone)}))
    _ps(kept, capsys)  # not due: the last sweep was a moment ago
    assert gone_walk.is_file() and old_version.is_file()
    _sweep_due(walks)
    _ps(kept, capsys)
    assert not gone_walk.exists() and not old_version.exists()
    assert foreign.read_bytes() == b"not a walk\n{}"
    assert link.is_symlink() and outside.read_bytes()
    assert others.is_file() and newer.is_file()
    assert kept_walk.is_file()  # the neighbour: a store still there keeps its walk
    assert time.time() - (walks / ".swept").stat().st_mtime < DAY


async def test_a_walk_kept_again_while_it_is_swept_stays(
        tmp_path: Path, own_key: AuditKey, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The store made again at its location while a sweep reads its old walk: the walk a
    `ps` keeps for it in that instant (moved into place) is not the file read: left."""
    gone = tmp_path / "gone.db"
    await _store(gone)
    _ps(gone, capsys)
    walk = _walk_of(gone)
    stale = walk.read_bytes()
    _remove_store(gone)
    read_kept = walk_sweep.read_kept

    def kept_again_meanwhile(key: AuditKey, path: Path, **kwargs: Any) -> Any:
        found = read_kept(key, path, **kwargs)
        fresh = path.with_name(".fresh")
        fresh.write_bytes(stale)
        os.replace(fresh, path)  # (as `walk_memory._write_whole` moves a walk into place)
        return found

    monkeypatch.setattr(walk_sweep, "read_kept", kept_again_meanwhile)
    assert walk_sweep.sweep(own_key) == []
    assert walk.read_bytes() == stale
    monkeypatch.undo()
    monkeypatch.setenv(KEY_ENV, str(own_key.path))
    assert walk_sweep.sweep(own_key) == [walk.name]  # (the neighbour: unraced, it goes)
    assert not walk.exists()


async def test_a_walk_kept_through_a_link_stays_while_its_store_is_there(
        tmp_path: Path, own_key: AuditKey, capsys: pytest.CaptureFixture[str]) -> None:
    """A walk is named by its store's location with the directory resolved (`remembered`):
    `ps` through a link to the store's directory keeps the same walk as `ps` by its own path.
    The location the walk recorded was the link's path: the link removed, the store still
    there, the sweep removed the walk (red team 25: the next `ps` walked it all again). It
    records the resolved location now; a store gone still loses its walk."""
    real = tmp_path / "real"
    real.mkdir()
    db = real / "s.db"
    await _store(db)
    link = tmp_path / "link"
    link.symlink_to(real)
    _ps(link / "s.db", capsys)
    walk = _walk_of(db)
    assert walk == _walk_of(link / "s.db")
    link.unlink()
    assert walk_sweep.sweep(own_key) == []
    assert walk.is_file()
    _remove_store(db)  # (the neighbour: gone, its walk goes)
    assert walk_sweep.sweep(own_key) == [walk.name]
