"""Red team 23 on lane marker (invariant 19, DESIGN §9 "Labels are coarse and beside the
chain"): a file replace narrows a file's labels only if its record lies before the chain's
`audit.signed` marker and before the marker this broker remembers (`broker.store.marked`). But
the remembered marker's hash covers every record before it: a writer (plain SQL, no key) who
writes a forged public replace of a secret file over the record just before the marker, and
hashes everything after it again (no link broken, the marker keeps its seq, not its hash),
placed the forgery below the remembered seq: it narrowed, the row's label dropped, and the
secret was exported (HIGH: the memory noted the rewrite, and grants there already count only
signed, `test_marker_before_redteam11.py`, but the replace still narrowed).

Fixed: a remembered marker moved or hashed anew, no replace narrows (failing closed: a genuine
older replace is over-labelled again, as a rewrite leaves the genuine grants unsigned)."""

from __future__ import annotations

from pathlib import Path

from broker import Kernel
from broker.store.recordsig import MARKER
from tests.broker.kernel.test_label_ceiling import OVER
from tests.broker.kernel.test_label_columns_redteam import _refused, _secret_file
from tests.broker.kernel.test_label_columns_redteam21 import FORGED_REPLACE
from tests.broker.kernel.test_labels import EXPORT, _agent
from tests.broker.kernel.test_marker_before_redteam11 import _records, forge_over
from tests.broker.kernel.test_marker_labels_redteam21 import _exports_public, _replaced_in_public
from tests.broker.store.conftest import raw


async def test_a_replace_forged_just_before_a_remembered_marker_narrows_nothing(
        pg_database: str, tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    await _secret_file(pg_database, fs)
    await _replaced_in_public(pg_database, fs)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:  # marked, remembered
        await _agent(b)
    marker = next(r.seq for r in _records(pg_database) if r.record.syscall == MARKER)
    forge_over(pg_database, marker - 1, FORGED_REPLACE)
    with raw(pg_database) as db:
        db.execute("DELETE FROM file_labels", ())
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        assert marker - 1 < b.store.chain_links().signatures.remembered[0]
        reader = await _agent(b, EXPORT)
        await b.call_tool(reader, "read_file", {"path": "/work/copy.txt"})
        # (over-labelled too: b's anchor published at its last close lies on no record of
        # the chain hashed anew, a data break: `broker/store/peer_anchors.py`, lane peertail)
        await _refused(b, reader, "x", OVER)
    assert not (fs / "exports" / "x").exists()


async def test_a_genuine_older_replace_narrows_while_the_remembered_marker_stands(
        pg_database: str, tmp_path: Path) -> None:
    """The neighbour: nothing rewritten, the older store's replace (before the marker)
    narrows at every shared open, the row's label dropped or not."""
    fs = tmp_path / "fs"
    await _replaced_in_public(pg_database, fs)
    for broker in ("b", "c"):
        async with Kernel.open(pg_database, fs_root=fs, broker=broker) as kernel:
            await _agent(kernel)
    with raw(pg_database) as db:
        db.execute("DELETE FROM file_labels", ())
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        await _exports_public(kernel, "/work/clean.txt")
    assert (fs / "exports" / "n").read_text() == "ok"
