"""A process's step history, read from the store as it is asked for.

Every observation is stored (one row per step, its result capped like an audit payload) in
the same transaction as the checkpoint after its step. In memory the broker keeps only the
observations its planner has not yet seen, whole; once the planner has chosen its next
action they are dropped, and reading an older step reads its row. So a broker's memory does
not grow with a process's history, and opening a store loads none of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

from broker.planner import Observation
from broker.planner.base import action_as_recorded
from broker.store import SQLiteStore


def observation_from_json(row: dict[str, Any]) -> Observation:
    action = action_as_recorded(row["action"]) if row["action"] else None
    return Observation(row["step"], action, row["result"], row["error"])


class _Steps(Sequence[Observation]):
    """Indexing over steps read a run at a time (`_read(start, stop)`)."""

    @overload
    def __getitem__(self, index: int) -> Observation: ...

    @overload
    def __getitem__(self, index: slice) -> list[Observation]: ...

    def __getitem__(self, index: int | slice) -> Observation | list[Observation]:
        if isinstance(index, slice):
            steps = range(*index.indices(len(self)))
            if steps.step != 1:
                return [self[i] for i in steps]
            return self._read(steps.start, max(steps.start, steps.stop))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("history index out of range")
        return self._read(index, index + 1)[0]

    def _read(self, start: int, stop: int) -> list[Observation]:
        raise NotImplementedError


class History(_Steps):
    def __init__(self, store: SQLiteStore, pid: int, length: int = 0) -> None:
        self._store = store
        self._pid = pid
        self._length = length
        self._unseen: dict[int, Observation] = {}

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Observation]:
        for start in range(0, self._length, 256):
            yield from self._read(start, min(start + 256, self._length))

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"History(pid={self._pid}, steps={self._length}, unseen={len(self._unseen)})"

    def since(self, start: int) -> Sequence[Observation]:
        """The steps from `start` on, as a planner that began there sees them (its first
        step is index 0); the whole history when `start` is 0."""
        return self if start == 0 else _Since(self, start)

    def append(self, observation: Observation) -> None:
        """A step's observation, kept whole until the planner has seen it."""
        self._unseen[self._length] = observation
        self._length += 1

    def seen(self) -> None:
        """The planner has seen everything so far: from now on it is read from the store."""
        self._unseen.clear()

    def _read(self, start: int, stop: int) -> list[Observation]:
        if all(i in self._unseen for i in range(start, stop)):
            return [self._unseen[i] for i in range(start, stop)]
        stored = {row["step"]: row for row in self._store.observations(self._pid, start, stop)}
        return [self._unseen[i] if i in self._unseen else observation_from_json(stored[i])
                for i in range(start, stop)]


class _Since(_Steps):
    """A history from one step on, read through to it (nothing copied)."""

    def __init__(self, history: History, start: int) -> None:
        self._history = history
        self._start = start

    def __len__(self) -> int:
        return max(0, len(self._history) - self._start)

    def _read(self, start: int, stop: int) -> list[Observation]:
        return self._history._read(self._start + start, self._start + stop)
