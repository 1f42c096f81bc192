"""A peer's labelled append that lands between this broker's replace and its narrowing
(invariant 19, DESIGN §9 "Labels are coarse and beside the chain"): two brokers write one file
of a chain they share (PostgreSQL). Broker `a`'s public process replaces a secret file; before
`a` narrows the row to its writer's label, broker `b`'s secret process appends the token. The
narrowing's join counted only records walked after the narrowing, so `a` read the file, the
token in it, as public, and exported it (no attacker needed: two writers at once).

So too an append begun before the replace (its intent recorded first) whose effect follows it.
Fixed: the narrowing counts the records from the replace's own intent on, and the writes in
flight at it (`ChainLinks.narrowed`; a walk keeps a labelled file's labels anew at each replace
of it, `DataLabels.see`). The hooks on `broker.syscalls.fs` are only for timing: the brokers,
the store (real PostgreSQL) and the files are real."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import broker.syscalls.fs as fs_module
from broker import Kernel
from tests.broker.kernel.test_label_columns_redteam import _refused
from tests.broker.kernel.test_label_columns_redteam21 import peer_appends_the_secret, secret_written
from tests.broker.kernel.test_labels import EXPORT, _agent


class _Peer(threading.Thread):
    """Broker `b`'s secret append, in a thread of its own (`b` runs its own event loop while
    `a`'s handler waits); `held`: it stops before its effect until `go` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, dsn: str, fs: Path, *,
                 held: bool) -> None:
        super().__init__()
        self.dsn, self.fs, self.failed = dsn, fs, list[BaseException]()
        self.at_effect, self.go = threading.Event(), threading.Event()
        if held:
            named = fs_module._named

            def wait_here(*args: Any) -> None:
                if threading.current_thread() is self:  # (`b`'s append, its intent recorded)
                    self.at_effect.set()
                    self.go.wait(60)
                named(*args)

            monkeypatch.setattr(fs_module, "_named", wait_here)
        else:
            self.go.set()

    def run(self) -> None:
        try:
            trio.run(peer_appends_the_secret, self.dsn, self.fs)
        except BaseException as exc:  # (surfaced in the test, not lost in the thread)
            self.failed.append(exc)

    def finish(self) -> None:
        if not self.is_alive():
            self.start()
        self.go.set()
        self.join()
        if self.failed:
            raise self.failed[0]


def _peer_before_narrowing(monkeypatch: pytest.MonkeyPatch, peer: _Peer) -> None:
    """`a`'s next narrowing has `b`'s append (begun, or whole) finish first."""
    narrow = fs_module._narrow

    def peer_then_narrow(*args: Any) -> None:
        monkeypatch.setattr(fs_module, "_narrow", narrow)  # (once)
        peer.finish()
        narrow(*args)

    monkeypatch.setattr(fs_module, "_narrow", peer_then_narrow)


async def _secret_then_replaced(a: Kernel, peer: _Peer | None = None) -> None:
    """/work/f.txt written secret, then replaced by a public process (narrowed); a `held`
    peer's append begun (its intent recorded) before the replace."""
    await secret_written(a)
    if peer is not None and not peer.go.is_set():
        peer.start()
        assert await trio.to_thread.run_sync(peer.at_effect.wait, 60)
    await a.call_tool(await _agent(a), "write_file", {"path": "/work/f.txt", "data": "x"})


@pytest.mark.parametrize("peer_intent", ["after the replace's", "before the replace's"])
async def test_a_peers_append_between_the_replace_and_its_narrowing_keeps_its_label(
        pg_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        peer_intent: str) -> None:
    """`b`'s append's effect lands after `a`'s replace's, before `a` narrows; its intent
    after `a`'s replace's, or before it (in flight: begun, its effect not yet done)."""
    fs = tmp_path / "fs"
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as a:
        peer = _Peer(monkeypatch, pg_database, fs, held=peer_intent.startswith("before"))
        _peer_before_narrowing(monkeypatch, peer)
        await _secret_then_replaced(a, peer)
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
