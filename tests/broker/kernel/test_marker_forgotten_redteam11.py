"""Red team 11 on lane sharedsig's remembered marker (`broker.store.marked`, DESIGN
invariant 15, §9). A shared broker forgets the marker it remembered when it finds the store
made again at the address (no audit record and no process row): at the chain's open, before
it has found, let alone remembered, the new store's marker (after the capability loading).

The attacker (plain SQL, no key) empties the audit and processes tables for a moment. A
broker that opens then forgets the old marker; an open cut off before its loading (a crash,
the broker stopped while its marker insert waits on a lock the writer holds) remembers
nothing. The writer puts the rows back, rewritten from before the marker, and forges a grant:
the next open reads the chain as an older store's, and the forgery grants (HIGH: the memory's
whole point, undone by a moment's emptying).

Fixed: the memory is never deleted first; a store made again has the marker this open finds
written over it (atomically: never a torn or empty file), so an open cut off in between
leaves the old one standing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import Kernel, NotCapable
from broker.kernel import kernel as kernel_module
from broker.store import chain as chain_module
from broker.store import marked
from broker.store.recordsig import MARKER, UNSIGNED
from tests.broker.kernel.test_capability_shared_signed_redteam import fs  # noqa: F401
from tests.broker.kernel.test_ends_signed_redteam9 import spawned_by_a
from tests.broker.kernel.test_marker_redteam9 import (
    _forge_grant_raw,
    _marker,
    _rewrite_from_marker,
)
from tests.broker.store.conftest import raw

TABLES = ("audit", "processes")


def _empty(dsn: str) -> dict[str, tuple[list[str], list[Any]]]:
    saved = {}
    with raw(dsn) as db:
        for table in TABLES:
            cursor = db.execute(f"SELECT * FROM {table}")
            saved[table] = ([d[0] for d in cursor.description], cursor.fetchall())
        for table in TABLES:
            db.execute(f"DELETE FROM {table}")
    return saved


def _put_back(dsn: str, saved: dict[str, tuple[list[str], list[Any]]]) -> None:
    with raw(dsn) as db:
        for table in TABLES:
            db.execute(f"DELETE FROM {table}")
            columns, rows = saved[table]
            for row in rows:
                db.execute(f"INSERT INTO {table} ({', '.join(columns)}) VALUES"
                           f" ({', '.join('?' * len(columns))})", tuple(row))


class _Cut(Exception):
    """The open stopped after its chain was opened (a crash, a broker stopped)."""


async def test_an_open_cut_off_on_an_emptied_store_keeps_the_remembered_marker(
        pg_database: str, fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    pid = await spawned_by_a(pg_database, fs)  # (broker a's open remembered the marker)
    saved = _empty(pg_database)

    def cut(*_: object) -> None:
        raise _Cut

    with monkeypatch.context() as patched:
        patched.setattr(kernel_module, "load_vouched", cut)
        with pytest.raises(BaseException) as raised:  # (an ExceptionGroup too)
            async with Kernel.open(pg_database, fs_root=fs, broker="b"):
                pass
        assert raised.errisinstance(_Cut) or "_Cut" in repr(raised.value)
    _put_back(pg_database, saved)
    _rewrite_from_marker(pg_database)
    _forge_grant_raw(pg_database, pid)
    async with Kernel.open(pg_database, fs_root=fs, broker="c") as kernel:
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})


async def test_rows_put_back_while_an_open_finds_the_store_empty_are_not_a_new_store(
        pg_database: str, fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """No crash needed: the writer empties the tables and holds a lock on `processes` that
    the open's look for a process row waits on; meanwhile it puts back the audit rows
    (rewritten from before the marker, a grant forged), then lets the look go on. The open
    took the store for made again, appended its marker after the rows put back and
    remembered that one: the forged grant, before it, vouched as an older broker's. (The
    lock's timing is played here by putting the rows back as the open's look returns.)"""
    pid = await spawned_by_a(pg_database, fs)
    _rewrite_from_marker(pg_database)
    _forge_grant_raw(pg_database, pid)
    saved = _empty(pg_database)
    real = chain_module.start_signing

    def looked_then_put_back(store: Any) -> Any:
        found = real(store)
        _put_back(pg_database, saved)
        return found

    with monkeypatch.context() as patched:
        patched.setattr(chain_module, "start_signing", looked_then_put_back)
        async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
            with pytest.raises(NotCapable):
                await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
    async with Kernel.open(pg_database, fs_root=fs, broker="c") as kernel:
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})


async def test_a_store_emptied_for_good_is_a_new_store_with_its_own_marker(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    """The neighbour: the tables emptied and left so (a store made again at the address, the
    files beside it kept: the open notes its anchors first), its marker is remembered and no
    marker noted moved."""
    await spawned_by_a(pg_database, fs)
    _empty(pg_database)
    for broker in ("a", "b"):
        async with Kernel.open(pg_database, fs_root=fs, broker=broker) as kernel:
            assert not [r for r in kernel.audit()
                        if r["syscall"] == UNSIGNED and "marker" in r["detail"]]
            before = [r["syscall"] for r in kernel.audit()]
            memory = kernel.store.marker_memory
        assert marked.recall(memory) == _marker(pg_database)
    assert before[0] != MARKER  # (the open's notes of the anchors came first)
