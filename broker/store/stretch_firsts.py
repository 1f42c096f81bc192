"""The first record in each stretch of the chain that carries a label, by key (a process, a
file, an object): what `broker.store.chain_labels` and `broker.store.data_labels` keep of the
links' one walk (docs/DESIGN.md, invariants 15 and 19).

A stretch ends at the records an open writes when it finds records past the anchor
(`audit.anchor`, `caps.unvouched`). An unvouched span always ends at such an open, so within a
stretch a record in the span is followed only by records in it: the first is counted exactly
when any is, and a writer who forges a label ahead of a genuine one hides nothing. Memory grows
with the keys, their labels and those opens, not the records."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from broker.store.audit import ANCHOR_RECORD

K = TypeVar("K", bound=Hashable)

# The records an open writes after a span no anchor vouches for: a stretch ends there.
STRETCH_ENDS = frozenset({ANCHOR_RECORD, "caps.unvouched"})


class StretchFirsts(Generic[K]):
    """Key -> label -> the seq of the first record in each stretch that carries it."""

    KEPT = ("_seen", "_stretch")  # (`broker.store.walk_memory`)

    def __init__(self) -> None:
        self._seen: dict[K, dict[str, list[int]]] = {}
        self._stretch: dict[K, set[str]] = {}  # the labels kept in this stretch, by key

    def end_stretch(self) -> None:
        self._stretch = {}

    def forget(self, key: K) -> None:
        """Nothing kept for `key` any more (its data replaced)."""
        self._seen.pop(key, None)
        self._stretch.pop(key, None)

    def restart(self, key: K) -> None:
        """A new stretch for `key` alone: the next record carrying any of its labels is kept."""
        self._stretch.pop(key, None)

    def holds(self, key: K) -> bool:
        return key in self._seen

    def kept(self, key: K) -> set[str]:
        """The labels kept for `key` in this stretch (a record naming only those adds
        nothing)."""
        return self._stretch.get(key, set())

    def keep(self, key: K, seq: int, labels: Any, *, stands: bool = True,
             latest_after: int | None = None) -> None:
        """Keep `labels` (a record's list, as it was read) for `key` at `seq`; one that does
        not `stand` for its stretch is kept, and the next record carrying it is kept too.
        `latest_after`: a seq kept past it is only ever counted as the latest is (a reader
        counts every one past it, or from some seq on), so `seq` takes its place."""
        if not labels or not isinstance(labels, list):
            return
        seen = self._seen.setdefault(key, {})
        kept = self._stretch.setdefault(key, set())
        for label in labels:
            if isinstance(label, str) and label not in kept:
                if stands:
                    kept.add(label)
                seqs = seen.setdefault(label, [])
                if latest_after is not None and seqs and latest_after < seqs[-1] <= seq:
                    seqs[-1] = seq
                else:
                    seqs.append(seq)

    def seqs_in(self, span: tuple[int, int]) -> set[int]:
        """The kept seqs in `span` (after, upto]: a record there gives a label."""
        return {seq for seen in self._seen.values() for seqs in seen.values() for seq in seqs
                if span[0] < seq <= span[1]}

    def labels(self, key: K, counts: Callable[[int], bool]) -> frozenset[str]:
        """The labels of `key` that a counted record carries."""
        return frozenset(label for label, seqs in self._seen.get(key, {}).items()
                         if any(map(counts, seqs)))
