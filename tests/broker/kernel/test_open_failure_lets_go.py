"""A kernel whose construction fails after its store opened lets the store go: the writer's
lock, its connection and its WAL checkpointer thread (`broker.store.wal_checkpointer`). Else
the failed open kept the file locked for the program's whole life (every later open of it a
Conflict, "another broker has it open") and a thread checkpointing it for ever.

The attack was a database writer damaging a live process's capability row (its policy no
longer JSON), so loading the capability table, in the kernel's construction, raised. Such a
row now leaves only its process holding nothing (red team 5:
`test_rows_nested_redteam5.py`), so the failure is injected where that load runs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from broker.kernel import AgentImage, Kernel
from broker.kernel import kernel as kernel_module
from broker.store.sqlite import SQLiteStore
from broker.store.vouch import Tampered


def _checkpointers() -> int:
    return sum(t.name == "libos-wal-checkpoint" for t in threading.enumerate())


async def _spawned_with_a_capability(db: Path) -> None:
    async with Kernel.open(db) as kernel:
        await kernel.register_image(AgentImage("holder", tools=("get_object",),
                                               needs=("obj:kept:read",)))
        kernel.spawn("holder", caps=["obj:kept:read"])


async def test_a_failed_construction_lets_the_store_go(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "k.db"
    await _spawned_with_a_capability(db)

    def damaged(*_: object) -> list[int]:
        raise Tampered("capability row cannot be read back: edited in the database")

    monkeypatch.setattr(kernel_module, "load_vouched", damaged)
    before = _checkpointers()
    with pytest.raises(Tampered, match="cannot be read back"):  # typed, not a raw ValueError
        async with Kernel.open(db):
            pass
    assert _checkpointers() == before  # no thread left checkpointing the file
    SQLiteStore(db).close()  # the writer's lock let go: the file opens again


async def test_a_repaired_store_opens(tmp_path: Path) -> None:
    """The neighbour: the same store, its row whole, opens with the capability loaded."""
    db = tmp_path / "k.db"
    await _spawned_with_a_capability(db)
    async with Kernel.open(db) as kernel:
        assert any(cap.scope == "kept" for _, cap in kernel.store.load_capabilities(live=True))
