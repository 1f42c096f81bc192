"""Red team (rtf) on capability rows vouched for by the chain (invariant 15): someone who
writes the database but holds no key edits every record that carries digests (so none is
intact, or none carries them), then widens a row. With no intact record carrying digests,
`CapDigests.problem` took every row as an older broker's (unchecked) and loaded the widened
row as granted. A vouching record not intact now counts as digests having begun: such rows
are named and left out (the process holds less, never more)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from broker.store.audit import GENESIS, record_hash
from broker.store.capvouch import cap_digest
from broker.store.opening import open_store
from tests.broker.kernel.test_capability_rows_vouched_redteam import (  # noqa: F401
    Made,
    _rows_of,
    edit,
    made,
    widen,
)
from tests.conftest import anchor_problems

STRIP = {
    "renamed": "UPDATE audit SET detail=replace(detail, 'cap_digests', 'cap_digestz')",
    "broken": "UPDATE audit SET detail=replace(detail, 'cap_digests\":[\"', "
              "'cap_digests\":[\"0')",
}


async def _refused_named_and_a_neighbour_reads(kernel: Kernel, pid: int, row: str) -> None:
    """After the edit: `pid` cannot read beyond its grant, an `audit.anchor` record names
    the edited row, and a process this broker makes is granted, and reads, as ever."""
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", {"path": "/data/secret/f"})
    found = anchor_problems(kernel)
    assert any(f"process {pid}'s capability {row}" in p for p in found), found
    fresh = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
    assert await kernel.call_tool(fresh, "read_file", {"path": "/data/pub/f"}) == "pub"


@pytest.mark.parametrize("how", STRIP)
async def test_digests_edited_out_of_every_record_do_not_make_rows_unchecked(
        made: Made, how: str) -> None:  # noqa: F811
    pid = made.pids["host.spawn"]
    [edited] = [c.id for _, c in _rows_of(made.store, pid) if c.scope == "/data/pub/**"]
    edit(made.store, STRIP[how], ())
    widen(made, pid, edited)
    async with Kernel.open(made.store, fs_root=made.fs_root) as kernel:
        await _refused_named_and_a_neighbour_reads(kernel, pid, edited)
        named = f"process {pid}'s capability {edited} (fs:/**:read,write, allow)"
        assert any(p.startswith(named) for p in kernel.verify_audit()[1])
        found = [r for r in kernel.audit() if r["syscall"] == "audit.anchor"]
        assert any(r["detail"]["problem"].startswith(named) for r in found)


def _rehashed(store: Path | str, edit: Callable[[str], str], widened: str) -> None:
    """Every record's detail text edited by `edit`, the whole chain hashed again (its hash is
    a plain sha256: anyone can; only the signed anchor says which head was the broker's), and
    capability row `widened` widened to everything, in one open (a second open as the writer
    would sign the new head)."""
    s = open_store(store)
    try:
        rows, prev = [], GENESIS
        for r in list(s.audit_records()):
            text = edit(r.detail_json)
            h = record_hash(r.seq, r.ts, replace(r.record, detail=json.loads(text)), text, prev)
            rows.append((text, prev, h, r.seq))
            prev = h
        with s.transaction() as db:
            for row in rows:
                db.execute("UPDATE audit SET detail=?, prev_hash=?, hash=? WHERE seq=?", row)
            db.execute("UPDATE capabilities SET scope='/**', rights='read,write' WHERE id=?",
                       (widened,))
    finally:
        s.close()


async def test_digests_edited_out_and_the_chain_hashed_again_do_not_make_rows_unchecked(
        made: Made) -> None:  # noqa: F811
    pid = made.pids["host.spawn"]
    [edited] = [c.id for _, c in _rows_of(made.store, pid) if c.scope == "/data/pub/**"]
    _rehashed(made.store, lambda text: text.replace("cap_digests", "cap_digestz"), edited)
    async with Kernel.open(made.store, fs_root=made.fs_root) as kernel:
        await _refused_named_and_a_neighbour_reads(kernel, pid, edited)


async def test_a_rewritten_chain_is_not_laundered_by_a_writer_open_that_loads_no_caps(
        made: Made) -> None:  # noqa: F811
    """The chain hashed again with a widened row's digest put in its grant's record; then
    the store opened as its writer by something that loads no capabilities (`libos keys
    rotate --db`, an embedding program's `open_store`): it signs the new head. The next
    kernel must still not take the rewritten records as vouching."""
    pid = made.pids["host.spawn"]
    [(handle, cap)] = [(h, c) for h, c in _rows_of(made.store, pid)
                       if c.scope == "/data/pub/**"]
    wide = replace(cap, scope="/**", rights=frozenset({"read", "write"}))
    _rehashed(made.store, lambda text: text.replace(cap_digest(handle, cap),
                                                    cap_digest(handle, wide)), cap.id)
    open_store(made.store).close()  # a writer's open that loads no capabilities
    async with Kernel.open(made.store, fs_root=made.fs_root) as kernel:
        await _refused_named_and_a_neighbour_reads(kernel, pid, cap.id)


async def test_every_cap_key_edited_out_and_the_chain_hashed_again(made: Made) -> None:  # noqa: F811
    """Every '"cap_' key renamed away and the chain hashed again: still not read as a store
    from before digests (a regression guard: it holds)."""
    pid = made.pids["host.spawn"]
    [edited] = [c.id for _, c in _rows_of(made.store, pid) if c.scope == "/data/pub/**"]
    _rehashed(made.store, lambda text: text.replace('"cap_', '"kap_'), edited)
    async with Kernel.open(made.store, fs_root=made.fs_root) as kernel:
        await _refused_named_and_a_neighbour_reads(kernel, pid, edited)
