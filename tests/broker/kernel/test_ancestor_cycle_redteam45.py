"""A writer's cycle of parent pointers through an ended ancestor must not hang `Kernel.open`
(red team 45). A live process loaded again brings its ended ancestors back into the table
(`recovery._ancestors_loaded`), and every walk up the table (`LiveDescendants`,
`Budgets.charge`) follows parent pointers with no end but the top: an ended parent whose row
a writer pointed back at its live child made that walk spin forever, at open. A parent is
always made before its child, so a pointer to a pid not smaller is not followed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from broker import Kernel
from tests.broker.kernel.test_budget_orphan_restart_rskern import _orphan

_OPEN = """
import sys, trio
from broker import Kernel
async def main():
    async with Kernel.open(sys.argv[1]) as kernel:
        leaf = int(sys.argv[2])
        print(kernel.process(leaf).alive, kernel.process(leaf).parent, flush=True)
trio.run(main)
"""


def _open_elsewhere(db_path: Path, leaf: int) -> str:
    """`Kernel.open` in a subprocess (a hang spins the loop: no trio timeout ends it)."""
    try:
        done = subprocess.run([sys.executable, "-c", _OPEN, str(db_path), str(leaf)],
                              capture_output=True, text=True, timeout=90,
                              cwd=Path(__file__).parents[3])
    except subprocess.TimeoutExpired:
        pytest.fail("Kernel.open hung on a cycle of parent pointers")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("points_at", ["leaf", "itself"])
async def test_a_cycle_through_an_ended_ancestor_does_not_hang_open(
        db_path: Path, points_at: str) -> None:
    async with Kernel.open(db_path) as kernel:
        _, middle, leaf = await _orphan(kernel)
    with sqlite3.connect(db_path) as con:
        con.execute("UPDATE processes SET parent=? WHERE pid=?",
                    (leaf if points_at == "leaf" else middle, middle))
    # the live leaf is loaded, under its ended parent, whose forged pointer is not followed
    assert _open_elsewhere(db_path, leaf) == f"True {middle}"


async def test_the_neighbour_an_unforged_chain_still_counts(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        top, middle, _ = await _orphan(kernel)
    async with Kernel.open(db_path) as kernel:
        assert kernel.process(middle).parent == top and kernel.lineage.below(top) == 1
