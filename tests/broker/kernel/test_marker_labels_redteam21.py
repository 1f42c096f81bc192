"""Red team 21's open point on lane labelcols (invariant 19, DESIGN §9 "Labels are coarse and
beside the chain"): a file replace past the chain's `audit.signed` marker narrows nothing
(unsigned, it could be a writer's forgery), but `DataLabels` looked only at the marker it
walked. A database writer (plain SQL, no key) who deletes the marker row, or rewrites the chain
from before it, then forges a public replace of a secret file and drops its row's label, had
the replace narrow again: the secret exported. Fixed: sharing began at the earlier of the
marker walked and the one this broker remembers (`broker.store.marked`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from broker import Kernel
from broker.store.label_ceiling import BROKEN_CHAIN
from tests.broker.kernel.test_label_columns_redteam import _refused, _secret_file
from tests.broker.kernel.test_label_columns_redteam21 import FORGED_REPLACE, _forge_beside
from tests.broker.kernel.test_labels import EXPORT, SECRET_READ, _agent, _tree
from tests.broker.kernel.test_marker_redteam9 import _delete_marker, _rewrite_from_marker
from tests.broker.store.conftest import raw


async def _replaced_in_public(store_at: Path | str, fs: Path) -> None:
    """A single writer's genuine replace: /work/clean.txt written secret, then replaced by a
    public writer (its row narrowed), before any broker shared the store."""
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        _tree(kernel)
        writer = await _agent(kernel, SECRET_READ)
        token = await kernel.call_tool(writer, "read_file", {"path": "/secrets/token.txt"})
        await kernel.call_tool(writer, "write_file", {"path": "/work/clean.txt", "data": token})
        clean = await _agent(kernel)
        await kernel.call_tool(clean, "write_file", {"path": "/work/clean.txt", "data": "ok"})


async def _exports_public(kernel: Kernel, path: str) -> None:
    """A reader of `path` stays public and its export is written."""
    reader = await _agent(kernel, EXPORT)
    data = await kernel.call_tool(reader, "read_file", {"path": path})
    await kernel.call_tool(reader, "write_file", {"path": "/exports/n", "data": data})
    assert kernel.process(reader).label == frozenset()


@pytest.mark.parametrize("attack", [_delete_marker, _rewrite_from_marker])
async def test_a_replace_forged_after_the_marker_was_removed_narrows_nothing(
        pg_database: str, tmp_path: Path, attack: Callable[[str], None]) -> None:
    fs = tmp_path / "fs"
    await _secret_file(pg_database, fs)
    await _replaced_in_public(pg_database, fs)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:  # marked, remembered
        await _agent(b)
    attack(pg_database)
    _forge_beside(pg_database, FORGED_REPLACE)
    with raw(pg_database) as db:
        db.execute("DELETE FROM file_labels", ())
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        reader = await _agent(b, EXPORT)
        await b.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
        # (a marker record deleted breaks the chain: the label ceiling)
        broken = {BROKEN_CHAIN} if attack is _delete_marker else set()
        await _refused(b, reader, "x", frozenset({"secret", *broken}))
        # A replace from before sharing began narrows no more either: the marker's hash
        # covered it, and a rewrite could have forged it (failing closed; red team 23, whose
        # test has the neighbour: the marker standing, it narrows).
        clean = await _agent(b, EXPORT)
        await b.call_tool(clean, "read_file", {"path": "/work/clean.txt"})
        assert b.process(clean).label == {"secret", *broken}
    assert not (fs / "exports" / "x").exists()


async def test_a_single_brokers_genuine_replace_still_narrows(db_path: Path,
                                                              tmp_path: Path) -> None:
    """The neighbour on SQLite (no broker shares it, nothing remembered): the public replace
    leaves the file public at the next open, its row's label dropped or not."""
    fs = tmp_path / "fs"
    await _replaced_in_public(db_path, fs)
    with raw(db_path) as db:
        db.execute("DELETE FROM file_labels", ())
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        await _exports_public(kernel, "/work/clean.txt")
    assert (fs / "exports" / "n").read_text() == "ok"
