"""What a long-running kernel remembers of past events for its operator (the processes a
broker finished, those it gave up): the newest few, and how many there were in all, so that
memory does not grow with the kernel's life (as `reaping` bounds the process table)."""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

KEEP_RECENT = 1024  # the newest kept; `total` counts them all


class Recent(Generic[T]):
    """An insertion-ordered set of the newest `keep` items added, and `total`: how many
    were ever added (an item added again counts once, where it first was)."""

    __slots__ = ("_items", "keep", "total")

    def __init__(self, keep: int | None = None) -> None:
        self.keep = KEEP_RECENT if keep is None else keep
        self._items: dict[T, None] = {}
        self.total = 0

    def add(self, item: T) -> None:
        if item in self._items:
            return
        self._items[item] = None
        self.total += 1
        if len(self._items) > self.keep:
            del self._items[next(iter(self._items))]  # the oldest

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
