"""The walk of labelled writes in flight (lane narrowrace, red team 30) reads an `fs.write`
outcome's `intent` from its detail, which a database writer without the key may make
anything: a forged, well-linked outcome naming a list for its intent raised `TypeError`
(unhashable) out of the open's walk, so the store could not be opened at all (a traceback,
no typed error). So did one ending a forged replace of the file, in the walk of replaces (an
outcome's intent taken as a key there too). An intent that is not a seq names no write in
flight and no replace: the open goes on, and the file keeps its label (with the ceiling's
`chain.broken`: the forged records lie past the anchor, invariant 19)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel
from broker.store.audit import INTENT, OUTCOME, AuditRecord
from broker.store.label_ceiling import BROKEN_CHAIN
from tests.broker.kernel.test_label_columns_redteam import _refused
from tests.broker.kernel.test_label_columns_redteam21 import _forge_beside, secret_written
from tests.broker.kernel.test_labels import EXPORT, _agent


@pytest.mark.parametrize("append", [True, False], ids=["append", "replace"])
@pytest.mark.parametrize("intent", [[1], {"a": 1}, "7", None])
async def test_a_forged_outcome_with_an_intent_of_any_shape_does_not_stop_the_open(
        store_at: Path | str, tmp_path: Path, intent: object, append: bool) -> None:
    fs = tmp_path / "fs"
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        await secret_written(kernel)
    in_flight = _forge_beside(str(store_at), AuditRecord(
        phase=INTENT, syscall="fs.write", pid=1, resource="/work/f.txt",
        detail={"args": {"path": "/work/f.txt", "data": "d", "append": append},
                "labels": ["secret"]}))
    _forge_beside(str(store_at), AuditRecord(
        phase=OUTCOME, syscall="fs.write", pid=1, resource="/work/f.txt",
        detail={"ok": True, "intent": intent, "result": in_flight}))
    async with Kernel.open(store_at, fs_root=fs) as kernel:  # (the open's walk reads them)
        reader = await _agent(kernel, EXPORT)
        await kernel.call_tool(reader, "read_file", {"path": "/work/f.txt"})
        await _refused(kernel, reader, "x", frozenset({"secret", BROKEN_CHAIN}))
    assert not (fs / "exports" / "x").exists()
