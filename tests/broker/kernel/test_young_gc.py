"""The cyclic collector's young threshold is raised while a kernel is open and put back when
the last one closes; an embedder's own choice (collection off, a larger threshold, a change
made while a kernel is open) is left as it is."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker import Kernel
from broker.kernel import young_gc


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
