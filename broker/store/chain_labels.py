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
records could only add a label, which narrows.

Kept per process and label: the first record that carries it in each stretch of the chain
(`broker.store.stretch_firsts`). A record shared mode counts only signed is kept but never
stands for its stretch (an unsigned forgery ahead would hide the genuine record). Memory
grows with the labels and those opens, not the records; a record whose labels were all kept in its
stretch already is not parsed (its label lists are found by a search of its text).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from broker.store.audit import CLOSES, OUTCOME, WHOLE, WRAPS, StoredRecord
from broker.store.capvouch import VOUCHING
from broker.store.ends import ENDING, FORK, SPAWN
from broker.store.json_column import Unreadable, read_json
from broker.store.label_names import NamedLabels
from broker.store.stretch_firsts import STRETCH_ENDS, StretchFirsts

# A record's text holds this if its detail may carry labels (`labels`, `args_labels`): the
# walk parses no other record's detail (most carry none).
MARK = 'labels"'
# Every label list in a record's text, at any depth (a quote inside a JSON string is escaped,
# so `labels": [` is always a key's): a superset of what the record may give its process.
LISTS = re.compile(r'labels"\s*:\s*(\[[^\]]*\])')
# The records shared mode counts only signed (`broker.store.recordsig.SIGNS`): one of these
# is kept but never stands for its stretch, so a writer's unsigned forgery (which counts for
# nothing) cannot hide the genuine record that follows it (red team 17).
_MAY_GO_UNSIGNED = frozenset((*VOUCHING, *ENDING))


class ProcessLabels:
    """Process id -> label -> the seq of the first record in each stretch that carries it."""

    KEPT = ("_known", "_spawning")  # (`broker.store.walk_memory`; `firsts` kept on its own)

    def __init__(self) -> None:
        self._firsts: StretchFirsts[int] = StretchFirsts()
        self._known: dict[int, set[str]] = {}  # label lists' texts naming only those, by pid
        self._spawning: dict[int, list[Any]] = {}  # a labelled spawn's intent: its labels
        # Every label any record's lists name (pid or none): the label ceiling's part.
        self.named = NamedLabels()

    @property
    def firsts(self) -> StretchFirsts[int]:
        return self._firsts

    def see(self, stored: StoredRecord) -> None:
        r = stored.record
        if r.syscall in STRETCH_ENDS:
            self._firsts.end_stretch()
            self._known = {}
        elif r.syscall == SPAWN:  # (its outcome names the child, and no label)
            self._see_spawn(stored, r.detail or parsed(stored.detail_json))
        pid, text = r.pid, stored.detail_json
        if MARK not in text:
            return
        lists = LISTS.findall(text)
        self.named.see(lists)
        if not isinstance(pid, int) or isinstance(pid, bool):
            return
        known = self._known.get(pid)
        if known is not None and known.issuperset(lists):
            return  # (nothing it could give is new in this stretch)
        mentioned, kept = named(lists), self._firsts.kept(pid)
        if mentioned is None or not mentioned <= kept:
            self._give(stored, pid)
            kept = self._firsts.kept(pid)
        if mentioned is not None and mentioned <= kept:  # (the next such record: not parsed)
            self._known.setdefault(pid, set()).update(lists)

    def _give(self, stored: StoredRecord, pid: int) -> None:
        """Keep the labels `stored` gives process `pid`."""
        r = stored.record
        detail = r.detail or parsed(stored.detail_json)  # (the walk parsed those that vouch)
        if r.inv is None:
            self._keep(pid, stored.seq, detail.get("labels") if r.phase == "intent" else (
                detail.get("args_labels") if r.phase == WHOLE else None), r.syscall)
        if r.phase in CLOSES:
            self._keep(pid, stored.seq, detail.get("labels"), r.syscall)
            folded = detail.get(WRAPS) if r.phase == WHOLE else None
            if isinstance(folded, dict):
                self._keep(pid, stored.seq, folded.get("labels"), r.syscall)
        elif r.syscall == FORK and r.phase == "admin":  # (its pid: the child's)
            self._keep(pid, stored.seq, detail.get("labels"), r.syscall)

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
            self._keep(child, stored.seq, carried, r.syscall)

    def _keep(self, pid: int, seq: int, labels: Any, syscall: str) -> None:
        self._firsts.keep(pid, seq, labels, stands=syscall not in _MAY_GO_UNSIGNED)

    def seqs_in(self, span: tuple[int, int]) -> set[int]:
        """The kept seqs in `span` (after, upto]: a record there gives a label."""
        return self._firsts.seqs_in(span)

    def labels(self, pid: int, counts: Callable[[int], bool]) -> frozenset[str]:
        """The labels of `pid` that a counted record carries."""
        return self._firsts.labels(pid, counts)


def parsed(text: str) -> dict[str, Any]:
    """A record's detail; {} for one edited into something unreadable (its hash check
    reports it)."""
    try:
        return read_json(text, "a record's detail")  # type: ignore[no-any-return]
    except Unreadable:
        return {}


def named(lists: list[str]) -> set[str] | None:
    """Every label the label lists' texts name; None if one is not read whole (a `]` in a
    name: the record is parsed)."""
    found: set[str] = set()
    for listed in lists:
        try:
            names = json.loads(listed)
        except ValueError:
            return None
        if not isinstance(names, list):
            return None
        found.update(n for n in names if isinstance(n, str))
    return found
