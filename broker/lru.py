"""A least-recently-used cache bounded by a number of entries and, optionally, by bytes.

The broker keeps things a model can make many of (tools' sources, compiled modules, compiled
schemas): every such cache is one of these, so a process that makes many large things costs
the broker a bounded amount of memory. Nothing may depend on an entry staying: a miss reads
the store or compiles again. Safe to use from several threads: a look-up takes no lock (each
step is one atomic dict operation; an entry evicted meanwhile is simply not moved), changes
take one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most `max_items` entries and `max_bytes` of `size(value)` in all (no byte bound when
    `size` is None); past either, the least recently used go first, each handed to `evicted`.
    A value larger than `max_bytes` on its own is not kept at all (and handed to `evicted`)."""

    def __init__(self, max_items: int, max_bytes: int | None = None,
                 size: Callable[[V], int] | None = None,
                 evicted: Callable[[K, V], None] | None = None) -> None:
        if (max_bytes is None) != (size is None):
            raise ValueError("a byte bound needs a size, and a size a byte bound")
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._size = size
        self._evicted = evicted
        self._data: OrderedDict[K, V] = OrderedDict()
        self._sizes: dict[K, int] = {}
        self.nbytes = 0  # what the kept values' `size` adds up to
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            try:  # noqa: SIM105 (contextlib.suppress costs a warm call more than the look-up)
                self._data.move_to_end(key)
            except KeyError:  # evicted by another thread meanwhile: still a good answer
                pass
        return value

    def __getitem__(self, key: K) -> V:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._data  # not a use: the order stays

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._data))

    def __setitem__(self, key: K, value: V) -> None:
        size = 0 if self._size is None else self._size(value)
        gone: list[tuple[K, V]] = []
        with self._lock:
            self._drop(key)
            if self.max_bytes is not None and size > self.max_bytes:
                gone.append((key, value))  # it would evict everything else and still not fit
            else:
                self._data[key] = value
                self._sizes[key] = size
                self.nbytes += size
            while len(self._data) > self.max_items or (
                    self.max_bytes is not None and self.nbytes > self.max_bytes):
                old, old_value = self._data.popitem(last=False)
                self.nbytes -= self._sizes.pop(old)
                gone.append((old, old_value))
        if self._evicted is not None:  # outside the lock: it may use this cache
            for old, old_value in gone:
                self._evicted(old, old_value)

    def pop(self, key: K) -> V | None:
        """Forget `key` (not an eviction: `evicted` is not called); its value, if kept."""
        with self._lock:
            return self._drop(key)

    def _drop(self, key: K) -> V | None:
        value = self._data.pop(key, None)
        if value is not None:
            self.nbytes -= self._sizes.pop(key)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._sizes.clear()
            self.nbytes = 0
