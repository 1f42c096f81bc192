"""Red team of `broker.kernel.young_gc`: kernels opened and closed in threads of their own
(`KernelThread`), interleaved at the worst moment, and an embedder that tunes only the older
generations while a kernel is open, must leave Python's collector as the embedder set it once
every kernel has closed."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


class _SwitchAfterRestore:
    """`gc` as `young_gc` sees it, except that right after the last close puts the old
    threshold back, another thread opens a kernel (a thread switch there: CPython may switch
    threads as a builtin call returns). The other thread is given a moment and not waited
    for beyond it (it may rightly have to wait for the close to finish)."""

    def __init__(self) -> None:
        self.other: threading.Thread | None = None

    def get_threshold(self) -> tuple[int, int, int]:
        return gc.get_threshold()

    def set_threshold(self, *threshold: Any) -> None:
        gc.set_threshold(*threshold)
        if self.other is None and threshold[0] != young_gc.YOUNG:
            self.other = threading.Thread(target=young_gc.opened)
            self.other.start()
            self.other.join(0.2)


def test_a_kernel_opened_in_another_thread_as_the_last_one_closes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gc.set_threshold(700, 10, 10)
    switch = _SwitchAfterRestore()
    monkeypatch.setattr(young_gc, "gc", switch)
    young_gc.opened()
    young_gc.closed()  # ... and meanwhile another thread opens its kernel
    assert switch.other is not None
    switch.other.join(5)
    assert gc.get_threshold() == (young_gc.YOUNG, 10, 10)  # raised for the open one
    young_gc.closed()  # the other kernel closes: the last one
    assert gc.get_threshold() == (700, 10, 10)


def test_older_generations_tuned_while_open_keep_the_young_default(tmp_path: Path) -> None:
    """An embedder that changes only the older generations (reading the young one back, as
    `gc.set_threshold(gc.get_threshold()[0], ...)` does) while a kernel is open gets its older
    generations and Python's young threshold back, not the kernel's."""
    gc.set_threshold(700, 10, 10)
    with KernelThread(tmp_path / "a.db"):
        gc.set_threshold(gc.get_threshold()[0], 20, 30)
    assert gc.get_threshold() == (700, 20, 30)
