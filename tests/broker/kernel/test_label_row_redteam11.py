"""Red team 11, beside the lane (invariants 15 and 19): a process's label is stored in its
row as it grows, and a load (an open, a takeover) used to take it from there alone. A
database writer (no key) set a secret-labelled process's `labels` to none; at the next open
it exported the secret through a capability whose bound denies `secret` (HIGH in effect:
"dropping a label ... is escalation", done with one UPDATE). Now a load joins in the labels
the chain's records show the process had (`broker.store.chain_labels`), notes the row's
lack once, and sets the row right; a process never labelled still exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import Kernel, NotCapable
from broker.kernel.image import AgentImage
from broker.store.audit import AuditRecord
from broker.store.opening import open_store
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.broker.kernel.test_labels import EXPORT, NEEDS, SECRET_READ, TOOLS, _tree
from tests.broker.kernel.test_leasing import Parked, script
from tests.broker.kernel.test_takeover_tampered_image_redteam import _anchors
from tests.broker.store.conftest import raw
from tests.conftest import open_image


def _drop_label(store_at: Path | str, pid: int) -> None:
    with raw(store_at) as db:
        db.execute("UPDATE processes SET labels=? WHERE pid=?", ("[]", pid))


def _notes(kernel: Kernel, pid: int) -> list[Any]:
    return [p for p in _anchors(kernel) if p.startswith(f"process {pid}'s label in its row")]


async def test_a_label_dropped_from_the_row_is_not_dropped(store_at: Path | str,
                                                           tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        await open_image(kernel, needs=NEEDS, tools=TOOLS)
        pid = kernel.spawn("agent", caps=[SECRET_READ, EXPORT])
        neighbour = kernel.spawn("agent", caps=[EXPORT])  # never labelled
        token = await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
        assert kernel.process(pid).label == {"secret"}
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "write_file", {"path": "/exports/t", "data": token})
    _drop_label(store_at, pid)
    verifier = open_store(store_at, writer=False)
    try:  # `libos audit --verify` names the row
        assert any(f"process {pid}: its row's label lacks secret" in line
                   for line in verifier.audit_problems()[1])
    finally:
        verifier.close()
    for _ in range(2):  # the lack is noted once: the first open sets the row right
        async with Kernel.open(store_at, fs_root=fs) as kernel:
            with pytest.raises(NotCapable, match="secret"):
                await kernel.call_tool(pid, "write_file", {"path": "/exports/t", "data": token})
            assert kernel.process(pid).label == {"secret"}
            assert kernel.store.get_process(pid)["labels"] == ["secret"]
            [note] = _notes(kernel, pid)
            assert "lacks secret" in note
            await kernel.call_tool(neighbour, "write_file", {"path": "/exports/n", "data": "hi"})
            assert kernel.process(neighbour).label == frozenset() and not _notes(kernel, neighbour)
            assert not any("row's label lacks" in line for line in kernel.verify_audit()[1])
    assert not (fs / "exports" / "t").exists() and (fs / "exports" / "n").read_text() == "hi"


async def secret_child(kernel: Kernel) -> tuple[int, str, int]:
    """A parent that read the secret, the token, and a child it spawned with it."""
    _tree(kernel)
    await open_image(kernel, needs=NEEDS, tools=TOOLS)
    parent = kernel.spawn("agent", caps=[SECRET_READ, EXPORT, "proc:agent:spawn"])
    token = await kernel.call_tool(parent, "read_file", {"path": "/secrets/token.txt"})
    child = await kernel.call_tool(parent, "spawn", {
        "image": "agent", "caps": [EXPORT], "args": {"token": token}})
    return parent, token, child


async def test_a_childs_and_a_forks_label_dropped_from_their_rows_is_not_dropped(
        db_path: Path, tmp_path: Path) -> None:
    """Neither ever made a call: their label is on their maker's record (a `proc.spawn`'s
    intent, the `host.fork` record)."""
    fs = tmp_path / "fs"
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        parent, _, child = await secret_child(kernel)
        fork = kernel.fork(parent)
        assert kernel.process(child).label == kernel.process(fork).label == {"secret"}
    for pid in (child, fork):
        _drop_label(db_path, pid)
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        for pid in (child, fork):
            assert kernel.process(pid).label == {"secret"}
            with pytest.raises(NotCapable, match="secret"):
                await kernel.call_tool(pid, "write_file", {"path": "/exports/c", "data": "x"})
            assert len(_notes(kernel, pid)) == 1
    assert not (fs / "exports" / "c").exists()


async def test_a_label_dropped_from_the_row_is_kept_at_a_takeover(pg_database: str,
                                                                 tmp_path: Path) -> None:
    """Shared mode: broker a labels the process and closes; the writer drops the label; broker
    b takes it over (`recovery.resume`) and runs its planner, whose export is refused; a
    neighbour never labelled, taken the same way, exports."""
    fs = tmp_path / "fs"

    def exporting(name: str) -> AgentImage:
        return AgentImage(name, tools=("read_file", "write_file"), needs=NEEDS, planner=script(
            {"tool": "write_file", "args": {"path": f"/exports/{name}", "data": "tok-123"}}))

    async with Kernel.open(pg_database, fs_root=fs, broker="a",
                           planners=lambda image, pid: Parked()) as a:
        _tree(a)
        await open_image(a, needs=NEEDS, tools=TOOLS)
        for name in ("leaky", "honest"):
            await a.register_image(exporting(name))
        leaky = a.spawn("leaky", caps=[SECRET_READ, EXPORT])
        honest = a.spawn("honest", caps=[EXPORT])
        await a.call_tool(leaky, "read_file", {"path": "/secrets/token.txt"})
        assert a.process(leaky).label == {"secret"}
    _drop_label(pg_database, leaky)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        for pid in (leaky, honest):
            assert (await b.wait(pid))["state"] == "exited"
        assert b.process(leaky).label == {"secret"}
        assert b.store.get_process(leaky)["labels"] == ["secret"]
        assert len(_notes(b, leaky)) == 1 and not _notes(b, honest)
        assert (fs / "exports" / "honest").read_text() == "tok-123"
    assert not (fs / "exports" / "leaky").exists()


async def test_a_label_forged_past_the_head_labels_nobody_nor_hides_a_genuine_one(
        store_at: Path | str, tmp_path: Path) -> None:
    """A record past the anchored head counts for nothing (as an end forged there: red team
    5): it could only add a label, which narrows, but the writer's word is no record. Nor
    does one forged before and after a genuine label hide it when the row's is dropped."""
    fs = tmp_path / "fs"
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        await open_image(kernel, needs=NEEDS, tools=TOOLS)
        pid = kernel.spawn("agent", caps=[SECRET_READ, EXPORT])
    forged = AuditRecord(phase="outcome", syscall="fs.read", pid=pid,
                         detail={"ok": True, "labels": ["secret"]})
    append_past_head(store_at, forged)
    for _ in range(2):
        async with Kernel.open(store_at, fs_root=fs) as kernel:
            await kernel.call_tool(pid, "write_file", {"path": "/exports/n", "data": "hi"})
            assert kernel.process(pid).label == frozenset() and not _notes(kernel, pid)
    async with Kernel.open(store_at, fs_root=fs) as kernel:  # now it reads the secret
        token = await kernel.call_tool(pid, "read_file", {"path": "/secrets/token.txt"})
    append_past_head(store_at, forged)
    _drop_label(store_at, pid)
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        with pytest.raises(NotCapable, match="secret"):
            await kernel.call_tool(pid, "write_file", {"path": "/exports/t", "data": token})
        assert len(_notes(kernel, pid)) == 1
