"""A shared broker's memory of the chain's `audit.signed` marker (`broker.store.marked`):
a store made again at a remembered address is not flagged, and the memory is never read or
written through a symlink."""

from __future__ import annotations

import os
from pathlib import Path

from broker import Kernel
from broker.store import marked
from broker.store.keys import key_path
from broker.store.location import beside
from broker.store.recordsig import UNSIGNED
from tests.broker.store.conftest import raw


def _memory(dsn: str) -> Path:
    return marked.place(key_path(), beside(dsn, "brokers").parent.name)


def _marker(dsn: str) -> tuple[int, str]:
    with raw(dsn) as db:
        return tuple(db.execute("SELECT seq, hash FROM audit WHERE syscall='audit.signed'"
                                ).fetchone())


async def test_a_store_made_again_at_a_remembered_address_is_not_flagged(
        pg_database: str, tmp_path: Path) -> None:
    memory = _memory(pg_database)
    marked.remember(memory, (7, "ab" * 32))  # (an earlier database at this address)
    async with Kernel.open(pg_database, fs_root=tmp_path, broker="b") as kernel:
        assert not [r for r in kernel.audit() if r["syscall"] == UNSIGNED]
    assert marked.recall(memory) == _marker(pg_database)


def test_the_memory_is_never_followed_through_a_symlink(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(f"3 {'cd' * 32}\n")
    memory = tmp_path / "marked" / "db"
    memory.parent.mkdir()
    os.symlink(elsewhere, memory)
    assert marked.recall(memory) is None
    marked.remember(memory, (9, "ef" * 32))
    assert elsewhere.read_text() == f"3 {'cd' * 32}\n"
    os.unlink(memory)
    marked.remember(memory, (9, "ef" * 32))
    assert marked.recall(memory) == (9, "ef" * 32)
    assert (memory.stat().st_mode & 0o777) == 0o600
