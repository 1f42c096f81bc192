"""What `libos ps` keeps of its walk (`broker.store.walk_memory`) is the walk: a walk kept at
any record and carried on from there finds what one walk of the whole chain finds, field for
field; and every field a walk fills is kept (one added and not kept fails here)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from broker import Kernel
from broker.store.chain_labels import ProcessLabels
from broker.store.ends import ProcessEnds
from broker.store.links import ChainLinks
from broker.store.opening import open_store
from broker.store.stretch_firsts import StretchFirsts
from broker.store.walk_memory import WalkMemory
from tests.conftest import open_image

# The fields no walk fills: what a run sets (the spans, the writer's head) or weighs again.
NOT_KEPT = {ChainLinks: {"_records", "_mine", "_tail", "signatures", "_lock", "broken",
                         "_ends", "_labels", "_unvouched", "_anchored", "_data", "_opened",
                         "first", "_anchors", "_anchors_lock"},
            # (a writer's broker's, whose walk is never kept; `_anchors`: a sharing broker's)
            # (`named`: the label ceiling's, which only a writer's data reads take, as `_data`)
            ProcessEnds: {"_standing", "_lineages"}, ProcessLabels: {"_firsts", "named"},
            StretchFirsts: set()}


def test_every_field_a_walk_fills_is_kept() -> None:
    for kind, made in ((ChainLinks, ChainLinks()), (ProcessEnds, ProcessEnds()),
                       (ProcessLabels, ProcessLabels()), (StretchFirsts, StretchFirsts())):
        assert set(vars(made)) == set(kind.KEPT) | NOT_KEPT[kind], kind


def _found(links: ChainLinks) -> list[Any]:
    """Every field the walk filled (whether kept or not)."""
    return [links.broken, *[{name: value for name, value in vars(obj).items()
                             if name not in NOT_KEPT[type(obj)]} for obj in (
        links, links.process_ends, links.process_labels, links.process_labels.firsts)]]


async def test_a_walk_kept_anywhere_and_carried_on_finds_what_one_walk_finds(
        db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=["proc:agent:spawn", "obj:*:read,write"])
        child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": []})
        await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": []})
        kernel.exit(child, 3, {"answer": [1, {"2": None}]})
        kernel.kill(parent)
        edited = kernel.store.last_seq() // 2
    with sqlite3.connect(db_path) as con:  # (a break, and the problems found after it)
        con.execute("UPDATE audit SET detail='{}' WHERE seq=?", (edited,))
    con.close()
    store = open_store(db_path, writer=False)
    try:
        whole = ChainLinks(store._linked_records)  # type: ignore[attr-defined]
        whole.walk()
        last = whole.linked[0]
        ends = whole.process_ends
        assert whole.broken is not None and ends._digests and ends._born and ends._acts
        memory = WalkMemory.of(store)
        assert memory is not None
        for at in range(1, last + 1):
            walked = ChainLinks(store._linked_records)  # type: ignore[attr-defined]
            walked.walk(upto=at)
            memory.head = 0
            memory.keep(walked)
            carried = ChainLinks(store._linked_records)  # type: ignore[attr-defined]
            memory.recall(store, carried, last)
            assert memory.head == at
            carried.walk()
            assert _found(carried) == _found(whole), at
    finally:
        store.close()
