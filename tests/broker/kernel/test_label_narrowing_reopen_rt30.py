"""Red team 30: a peer's labelled append in flight at this broker's open (its intent walked
by the open's walk, its effect after this broker's replace) keeps its label (invariant 19,
DESIGN §9 "Labels are coarse and beside the chain"). The narrowing kept the labels of writes
in flight at the replace only if their intent was walked after the open: one begun before a
reopen was missed, and the token the peer appended read as public (exported)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker import Kernel
from tests.broker.kernel.test_label_columns_redteam import _refused
from tests.broker.kernel.test_label_narrowing_race import _Peer
from tests.broker.kernel.test_labels import EXPORT, SECRET_READ, _agent, _tree


async def test_a_peers_append_in_flight_at_the_open_keeps_its_label(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        _tree(a)
        writer = await _agent(a, SECRET_READ)
        token = await a.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
        await a.call_tool(writer, "write_file", {"path": "/work/f.txt", "data": token})
    peer = _Peer(monkeypatch, pg_database, fs, held=True)
    peer.start()  # (b's append: its intent recorded, its effect held)
    assert await trio.to_thread.run_sync(peer.at_effect.wait, 60)
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:  # (a reopens)
        await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})
        await trio.to_thread.run_sync(peer.finish)  # (b's effect after a's replace)
        assert (fs / "work" / "f.txt").read_text() == "xtok-123"
        reader = await _agent(a, EXPORT)
        assert await a.call_tool(reader, "read_file", {"path": "/work/f.txt"}) == "xtok-123"
        await _refused(a, reader, "xtok-123")
    assert not (fs / "exports" / "x").exists()
