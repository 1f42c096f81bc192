"""A peer's labelled append that lands between this broker's replace and its narrowing
(invariant 19, DESIGN §9 "Labels are coarse and beside the chain"): two brokers write one file
of a chain they share (PostgreSQL). Broker `a`'s public process replaces a secret file; before
`a` narrows the row to its writer's label, broker `b`'s secret process appends the token. The
narrowing's join counted only records walked after the narrowing, so `a` read the file, the
token in it, as public, and exported it (no attacker needed: two writers at once).

Fixed: the narrowing counts the records from the replace's own intent on (`ChainLinks.narrowed`;
a walk restarts a file's labels at each replace of it, `DataLabels.see`).
The hook on `broker.syscalls.fs._narrow` is only for timing: the brokers, the store (real
PostgreSQL) and the files are real."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import broker.syscalls.fs as fs_module
from broker import Kernel
from tests.broker.kernel.test_label_columns_redteam import _refused
from tests.broker.kernel.test_label_columns_redteam21 import peer_appends_the_secret
from tests.broker.kernel.test_labels import EXPORT, SECRET_READ, _agent, _tree


def _peer_first(monkeypatch: pytest.MonkeyPatch, dsn: str, fs: Path) -> None:
    """`a`'s next narrowing runs broker `b`'s secret append first (in a thread of its own: `b`
    runs its own event loop while `a`'s handler waits)."""
    narrow = fs_module._narrow

    def peer_then_narrow(*args: Any) -> None:
        monkeypatch.setattr(fs_module, "_narrow", narrow)  # (once)
        failed: list[BaseException] = []

        def run() -> None:
            try:
                trio.run(peer_appends_the_secret, dsn, fs)
            except BaseException as exc:  # (surfaced in the test, not lost in the thread)
                failed.append(exc)

        peer = threading.Thread(target=run)
        peer.start()
        peer.join()
        if failed:
            raise failed[0]
        narrow(*args)

    monkeypatch.setattr(fs_module, "_narrow", peer_then_narrow)


async def _secret_then_replaced(a: Kernel) -> None:
    """/work/f.txt written secret, then replaced by a public process (narrowed)."""
    _tree(a)
    writer = await _agent(a, SECRET_READ)
    token = await a.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
    await a.call_tool(writer, "write_file", {"path": "/work/f.txt", "data": token})
    await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})


async def test_a_peers_append_between_the_replace_and_its_narrowing_keeps_its_label(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        _peer_first(monkeypatch, pg_database, fs)
        await _secret_then_replaced(a)
        assert (fs / "work" / "f.txt").read_text() == "xtok-123"  # (the peer's, after `a`'s)
        reader = await _agent(a, EXPORT)
        assert await a.call_tool(reader, "read_file", {"path": "/work/f.txt"}) == "xtok-123"
        await _refused(a, reader, "xtok-123")
    assert not (fs / "exports" / "x").exists()


async def test_a_replace_with_no_peer_append_still_narrows(
        pg_database: str, tmp_path: Path) -> None:
    """The neighbour: no peer append, the replace narrows the file to its writer's (public),
    and the file exports."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        await _secret_then_replaced(a)
        assert a.store.file_labels("/work/f.txt") == frozenset()
        reader = await _agent(a, EXPORT)
        data = await a.call_tool(reader, "read_file", {"path": "/work/f.txt"})
        await a.call_tool(reader, "write_file", {"path": "/exports/x", "data": data})
        assert a.process(reader).label == frozenset()
    assert (fs / "exports" / "x").read_text() == "x"
