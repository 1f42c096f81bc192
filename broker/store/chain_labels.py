"""The labels of processes the audit chain records (docs/DESIGN.md, invariants 15 and 19):
collected by the links' walk (`broker.store.links.ChainLinks`) beside the ends, so a load
never takes a process's label from its row alone (a row is anyone's who writes the database:
a label dropped from it is escalation, done with one UPDATE; red team 11).

A label never shrinks, so what a process's records carry is a floor for its label, and a load
joins it in (`broker.kernel.label_floor`). Only what is certain to be in the process's label
once the record is written counts (the rest would over-label a process a crash cut off):

* a top-level call's intent (no invocation): its `labels` are the process's label then
  (a whole record's `args_labels`);
* an outcome's (a whole record's, a folded read's: `audit.WRAPS`) `labels`: the result's,
  joined into the process before that record is written (`broker.kernel.label_flow`);
* a `proc.spawn` outcome that made a child: its intent's `labels` are the child's first label
  (the call's, which holds its process's); a `host.fork` record's `labels`, its child's.

A call inside an invocation carries the invocation's label too (its tool's code, its caller),
which reaches the process only when the invocation ends: not counted. A record counts only as
the caller's `counts` says (not past the anchored head, not in an unvouched span); forged
records could only add a label, which narrows. Kept per process and label: the first and the
last record that carry it (the first is genuine unless an unvouched span holds it, the last
unless a forgery past the head is it), so memory grows with the labels, not the records.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.store.audit import CLOSES, OUTCOME, WHOLE, WRAPS, StoredRecord
from broker.store.ends import FORK, SPAWN
from broker.store.json_column import Unreadable, read_json

# A record's text holds this if its detail may carry labels (`labels`, `args_labels`): the
# walk parses no other record's detail (most carry none).
MARK = 'labels"'


class ProcessLabels:
    """Process id -> label -> [the first, the last] seq of a record that carries it."""

    def __init__(self) -> None:
        self._seen: dict[int, dict[str, list[int]]] = {}
        self._spawning: dict[int, list[Any]] = {}  # a labelled spawn's intent: its labels

    def see(self, stored: StoredRecord) -> None:
        r = stored.record
        if r.syscall == SPAWN:  # (its outcome names the child, and no label)
            self._see_spawn(stored, r.detail or _parsed(stored.detail_json))
        pid = r.pid
        if MARK not in stored.detail_json or not isinstance(pid, int) or isinstance(pid, bool):
            return
        detail = r.detail or _parsed(stored.detail_json)  # (the walk parsed those that vouch)
        if r.inv is None:
            self._keep(pid, stored.seq, detail.get("labels") if r.phase == "intent" else (
                detail.get("args_labels") if r.phase == WHOLE else None))
        if r.phase in CLOSES:
            self._keep(pid, stored.seq, detail.get("labels"))
            folded = detail.get(WRAPS) if r.phase == WHOLE else None
            if isinstance(folded, dict):
                self._keep(pid, stored.seq, folded.get("labels"))
        elif r.syscall == FORK and r.phase == "admin":  # (its pid: the child's)
            self._keep(pid, stored.seq, detail.get("labels"))

    def _see_spawn(self, stored: StoredRecord, detail: dict[str, Any]) -> None:
        r = stored.record
        if r.phase == "intent":
            if detail.get("labels"):
                self._spawning[stored.seq] = detail["labels"]
            return
        intent = detail.get("intent") if r.phase == OUTCOME else None
        carried = (detail.get("args_labels") if r.phase == WHOLE else
                   self._spawning.pop(intent, None) if isinstance(intent, int) else None)
        child = detail.get("result")
        if detail.get("ok") is True and isinstance(child, int) and not isinstance(child, bool):
            self._keep(child, stored.seq, carried)

    def _keep(self, pid: int, seq: int, labels: Any) -> None:
        if not labels or not isinstance(labels, list):
            return
        seen = self._seen.setdefault(pid, {})
        for label in labels:
            if isinstance(label, str):
                ends = seen.get(label)
                if ends is None:
                    seen[label] = [seq, seq]
                else:
                    ends[1] = seq

    def seqs_in(self, span: tuple[int, int]) -> set[int]:
        """A seq in `span` (after, upto] of each process's label a record there carries."""
        return {seq for seen in self._seen.values() for ends in seen.values() for seq in ends
                if span[0] < seq <= span[1]}

    def labels(self, pid: int, counts: Callable[[int], bool]) -> frozenset[str]:
        """The labels of `pid` that a counted record carries."""
        return frozenset(label for label, (first, last) in self._seen.get(pid, {}).items()
                         if counts(first) or counts(last))


def _parsed(text: str) -> dict[str, Any]:
    """A record's detail; {} for one edited into something unreadable (its hash check
    reports it)."""
    try:
        return read_json(text, "a record's detail")  # type: ignore[no-any-return]
    except Unreadable:
        return {}
