"""The cyclic collector's young threshold is raised while a kernel is open and put back when
the last one closes; an embedder's own choice (collection off, a larger threshold, a change
made while a kernel is open) is left as it is."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from broker import AgentImage, Kernel
from broker.kernel import young_gc
from broker.planner import Exit


@pytest.fixture(autouse=True)
def _threshold() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


async def test_raised_while_open_and_put_back(tmp_path: Path) -> None:
    gc.set_threshold(700, 10, 10)
    async with Kernel.open(tmp_path / "a.db"):
        assert gc.get_threshold() == (young_gc.YOUNG, 10, 10)
        async with Kernel.open(tmp_path / "b.db"):
            assert gc.get_threshold() == (young_gc.YOUNG, 10, 10)
        assert gc.get_threshold() == (young_gc.YOUNG, 10, 10)  # one kernel is still open
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.parametrize("own", [(0, 10, 10), (50_000, 5, 5)])
async def test_an_embedders_own_setting_is_kept(tmp_path: Path, own: tuple[int, int, int]
                                                ) -> None:
    gc.set_threshold(*own)
    async with Kernel.open(tmp_path / "a.db"):
        assert gc.get_threshold() == own
    assert gc.get_threshold() == own


async def test_a_change_made_while_open_is_not_undone(tmp_path: Path) -> None:
    gc.set_threshold(700, 10, 10)
    async with Kernel.open(tmp_path / "a.db"):
        gc.set_threshold(2_000, 10, 10)
    assert gc.get_threshold() == (2_000, 10, 10)


class _Held:
    """A planner that waits for the test before it exits: its process runs meanwhile."""

    def __init__(self, go: trio.Event) -> None:
        self.go = go

    async def next_action(self, history: Any) -> Exit:
        await self.go.wait()
        return Exit(0)


def test_the_threshold_grows_in_powers_of_two_with_the_processes() -> None:
    assert young_gc.young_threshold(0) == young_gc.YOUNG
    assert young_gc.young_threshold(young_gc.YOUNG // young_gc.PER_PROCESS) == young_gc.YOUNG
    assert young_gc.young_threshold(200) == 4 * young_gc.YOUNG  # 25,600 wanted
    assert young_gc.young_threshold(10_000) == 128 * young_gc.YOUNG


async def _held_processes(kernel: Kernel, count: int) -> tuple[trio.Event, list[int]]:
    """`count` processes, each held in its first step until the event is set."""
    await kernel.register_image(AgentImage("held"))
    go = trio.Event()
    pids = [kernel.spawn("held", planner=_Held(go)) for _ in range(count)]
    await trio.testing.wait_all_tasks_blocked()
    return go, pids


async def test_raised_further_while_many_processes_run(tmp_path: Path) -> None:
    """Thousands of processes suspended in their steps hold about a hundred containers each:
    the young threshold follows how many run, and comes back down as they end."""
    gc.set_threshold(700, 10, 10)
    async with Kernel.open(tmp_path / "a.db") as kernel:
        go, pids = await _held_processes(kernel, 200)
        assert gc.get_threshold() == (young_gc.young_threshold(200), 10, 10)
        go.set()
        for pid in pids:
            await kernel.wait(pid)
        assert gc.get_threshold() == (young_gc.YOUNG, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


async def test_raised_as_processes_are_spawned_before_they_run(tmp_path: Path) -> None:
    """A host spawning many processes in a row: each holds its objects while it waits for
    its task to run, so the threshold follows the spawns, not the tasks' first steps (a
    spawn loop of 10,000 set off young, middle and a full collection: ~11% of its time)."""
    gc.set_threshold(700, 10, 10)
    async with Kernel.open(tmp_path / "a.db") as kernel:
        await kernel.register_image(AgentImage("held"))
        go = trio.Event()
        pids = [kernel.spawn("held", planner=_Held(go)) for _ in range(200)]
        assert gc.get_threshold() == (young_gc.young_threshold(200), 10, 10)  # none ran yet
        go.set()
        for pid in pids:
            await kernel.wait(pid)
        assert gc.get_threshold() == (young_gc.YOUNG, 10, 10)
    assert gc.get_threshold() == (700, 10, 10)


async def test_an_embedders_change_while_processes_run_is_kept(tmp_path: Path) -> None:
    gc.set_threshold(700, 10, 10)
    async with Kernel.open(tmp_path / "a.db") as kernel:
        go, pids = await _held_processes(kernel, 200)
        gc.set_threshold(5_000, 10, 10)
        go.set()
        for pid in pids:
            await kernel.wait(pid)
        assert gc.get_threshold() == (5_000, 10, 10)  # not moved as they ended
    assert gc.get_threshold() == (5_000, 10, 10)


def test_the_counts_a_threshold_is_kept_for_are_those_it_is_chosen_for() -> None:
    """A start or an exit inside `kept_by` of the threshold set last skips the setting: it
    must be exactly the counts `young_threshold` gives that threshold for."""
    for processes in range(-2, 40_000):
        low, high = young_gc.kept_by(young_gc.young_threshold(processes))
        assert low < processes <= high
