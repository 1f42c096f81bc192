"""Red team of `broker.kernel.young_gc`: kernels opened and closed in threads of their own
(`KernelThread`), interleaved at the worst moment, and an embedder that tunes only the older
generations while a kernel is open, must leave Python's collector as the embedder set it once
every kernel has closed."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.kernel import young_gc
from broker.kernel_thread import KernelThread


@pytest.fixture(autouse=True)
def _threshold() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_kernels_in_threads_closed_in_either_order_put_it_back(tmp_path: Path) -> None:
    gc.set_threshold(700, 10, 10)
    first = KernelThread(tmp_path / "a.db").__enter__()
    second = KernelThread(tmp_path / "b.db").__enter__()
    assert gc.get_threshold() == (young_gc.YOUNG, 10, 10)
    first.__exit__(None, None, None)
    assert gc.get_threshold() == (young_gc.YOUNG, 10, 10)  # the second is still open
    second.__exit__(None, None, None)
    assert gc.get_threshold() == (700, 10, 10)
