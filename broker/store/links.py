"""The audit chain's links as a loader trusts them (docs/DESIGN.md, invariant 15): walked
once per store (a kernel's), then only over the records appended since, never per load.

Loading reads the records that vouch (for capability rows, for images) through an index,
record by record: each is checked intact, but not its place in the chain. A record forged
between genuine ones (intact on its own) breaks the chain somewhere after it: at the next
record's link, or further on if the writer hashed the records after it again. Only a record
from which every later one is intact and linked up to the anchored head is one the anchor's
signature covers; so a voucher counts only if the walk found no problem after it up to the
anchored head (`vouches`), and only as the walk found it (its hash then: one edited since is
not the one walked). A problem before it says nothing of it. The images' fallback asks
whether the chain is broken at all (`broken`). The walk also counts the spends of each
counted capability (`spent`: its intents, and the uses a grant's record says it handed on,
wherever they lie: they only lower), which bound the uses its row may hold
(`capvouch.CAP_USES`), and the records that ended a process (`ended`:
`broker.store.ends`). Ends count only where the anchor vouches, as grants do: not in a span
the capability vouching settled as unvouched (`discount`: past the anchored head at a
writer's open, or in a `caps.unvouched` note's), and a refusal only where the chain is
whole from it to the anchored head. The labels records show a process had (`labels`:
`broker.store.chain_labels`) count as ends do.
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from itertools import takewhile
from typing import Any

from broker.store.audit import GENESIS, ChainProblem, StoredRecord, verify_chain
from broker.store.capvouch import CAP_HANDED, VOUCHING
from broker.store.chain_labels import ProcessLabels
from broker.store.data_labels import DataKey, DataLabels
from broker.store.ends import BINDS, END, FORK, SPAWN, TAKE_BACK, ProcessEnds, birth
from broker.store.peer_anchors import LOOKS, PeerAnchors
from broker.store.recordsig import RecordSignatures

# The records that make a child: its label is its maker's, shown by records before them
# (`chain_labels`), so one vouches only if the chain is whole before it too (red team 17).
_INHERITING = frozenset({SPAWN, FORK})

Span = tuple[int, int]  # records (after, upto]


class ChainLinks:
    """What a walk of the chain found, as far as it went. `records(after)`: the stored
    records after a seq, in order (none: a verifier's, fed by `check`)."""

    # What a walk found, as `broker.store.walk_memory` keeps it (with `_ends` and `_labels`):
    # every field a walk fills, none a run sets (the spans, the writer's head).
    KEPT = ("_linked", "_problems", "_walked", "_spent", "_handed")

    def __init__(self, records: Callable[[int], Iterable[StoredRecord]] = lambda after: (),
                 mine: Callable[[], tuple[int, str] | None] = lambda: None,
                 signatures: RecordSignatures | None = None,
                 anchors: PeerAnchors | None = None) -> None:
        self._records = records
        # A single writer's head (seq, hash): a record past it is not its own (appended by
        # someone without the key while it runs; the next open finds it past the anchored
        # head), nor is one the walk linked to a head of another hash (its newest records
        # rewritten in place: nothing after them breaks a link).
        self._mine = mine
        self._tail: dict[int, str] = {}  # the hashes walked from the writer's head on
        # Shared mode: which vouching records carry their writer's signature (`recordsig`).
        self.signatures = signatures
        # Shared mode: the peers' published anchors, checked against the walked chain's end
        # before data labels are read (a cut at the very end breaks no link: `peer_anchors`).
        self._anchors = anchors
        self._anchors_lock = threading.Lock()  # (one read, walk and check at a time)
        self._lock = threading.Lock()  # (loads run on worker threads too)
        self._linked: tuple[int, str] = (0, GENESIS)  # the last record walked
        # The hash of the chain's first record as the first walk found it (never read again:
        # what a writer's broker names its store by, `DurableState.identity`, red team 27;
        # not in `KEPT`: a writer's walk is never kept, a reader names its store by a query).
        self.first: str | None = None
        self.broken: ChainProblem | None = None  # the chain's first problem, once found
        self._problems: list[int] = []  # the seqs of the problems found, in order
        self._walked: dict[int, str] = {}  # a vouching record's seq: its hash as walked
        self._spent: dict[str, int] = {}  # a capability's id: the intents naming it walked
        self._handed: dict[str, int] = {}  # a capability's id: the uses records handed on
        self._ends = ProcessEnds()
        self._labels = ProcessLabels()
        # (sharing began at the marker this broker remembers too, if the chain lost it)
        self._data = DataLabels(lambda: signatures.remembered if signatures is not None else None,
                                None if signatures is None else signatures.holds)
        # The last record the first walk reached: the chain as this store was opened on it
        # (`data_labels` keeps no later record: a write since is in its row as made).
        self._opened: int | None = None
        self._unvouched: tuple[Span, ...] = ()  # (`discount`)
        self._anchored: int | None = None

    @property
    def linked(self) -> tuple[int, str]:
        """The last record walked (seq, hash)."""
        return self._linked

    @property
    def process_ends(self) -> ProcessEnds:
        return self._ends

    @property
    def process_labels(self) -> ProcessLabels:
        return self._labels

    def walk(self, upto: int | None = None) -> ChainProblem | None:
        """Walk the records appended since the last walk (up to seq `upto`, if given); the
        chain's first problem, or None."""
        with self._lock:
            mine = self._mine()
            tail: dict[int, str] = {}
            records = self._records(self._linked[0])
            if upto is not None:  # (a reader's, to keep its walk at the anchor: `walk_memory`)
                if self._linked[0] >= upto:
                    return self.broken
                records = takewhile(lambda stored: stored.seq <= upto, records)
            if mine is not None:  # (a single writer's: only the records from its head on)
                records = _noting(records, mine[0], tail)
            self.check(records, after=self._linked)
            if self._opened is None:
                self._opened = mine[0] if mine is not None else self._linked[0]
                # (what it keeps is fixed from now on; shared, a peer's later writes add)
                self._data.close(adding=self.signatures is not None)
            if tail:
                self._tail = tail
            return self.broken

    def walk_anchored(self) -> None:
        """Shared mode, before data labels are read: `walk`, the peers' published anchors
        read first (each names records committed before it) and checked against the walked
        chain after (`peer_anchors`: one off it is a cut, a data break for good)."""
        anchors = self._anchors
        if anchors is None:
            self.walk()
            return
        with self._anchors_lock:
            anchors.read()
            for _ in range(LOOKS):  # (again while a notice came with the walk's queries)
                self.walk()
                anchors.settle(self._linked[0])
                if not anchors.read():
                    return  # (past LOOKS: those read are settled after a later walk)

    def check(self, records: Iterable[StoredRecord], *, after: tuple[int, str] = (0, GENESIS)
              ) -> tuple[int, list[ChainProblem]]:
        """`verify_chain` over `records` (those after `after`), noting what loading needs of
        them; a verifier's own walk feeds it so (`broker.store.verify`)."""
        last: list[StoredRecord] = []

        def seen() -> Iterator[StoredRecord]:
            for stored in records:
                if self.first is None and after == (0, GENESIS):
                    self.first = stored.hash
                self._see(stored)
                last[:] = [stored]
                yield stored

        count, problems = verify_chain(seen(), after=after)
        self._ends.forget()  # (a problem found changes which refusals count)
        if problems:
            self.broken = self.broken or problems[0]
            self._problems.extend(sorted({p.seq for p in problems}))
        if last:
            self._linked = (last[0].seq, last[0].hash)
        return count, problems

    def _see(self, stored: StoredRecord) -> None:
        r = stored.record
        self._ends.see(stored)
        self._labels.see(stored)
        self._data.see(stored)
        if self._anchors is not None:
            self._anchors.see(stored.seq, stored.hash)
        if self.signatures is not None:
            self.signatures.see(stored)
        if r.syscall in VOUCHING:
            self._walked[stored.seq] = stored.hash
            handed = r.detail.get(CAP_HANDED)
            if isinstance(handed, dict):  # (uses handed to a child, an answer: spent here)
                for cap_id, uses in handed.items():
                    if type(uses) is int and uses > 0:
                        self._handed[cap_id] = self._handed.get(cap_id, 0) + uses
        cap_id = r.cap_id
        if r.phase == "intent" and cap_id is not None:
            # A spend, if the capability is counted: the intent record that names it, written
            # in the same transaction as the use it spends (`AuditChain.append_audit`'s
            # `spend`). One of a vouching name is a spend too (a `proc.spawn` spends a counted
            # spawn grant), and so is one chained before its grant's record (a child's first
            # spend may come before the `proc.spawn` outcome that grants it).
            self._spent[cap_id] = self._spent.get(cap_id, 0) + 1

    def spent(self, cap_id: str) -> int:
        """The uses of a counted capability the walked chain records spent: its intents,
        and the uses the records that grant handed on from it (`capvouch.CAP_HANDED`),
        wherever they lie, as intents are: a hand-on is recorded with or after the count it
        lowered, so counting one past the anchored head never fails an honest row, while
        not counting it let a writer who put back an older lock file give it back."""
        return self._spent.get(cap_id, 0) + self._handed.get(cap_id, 0)

    def breaks(self) -> tuple[list[int], frozenset[int]]:
        """Where the walked chain is not whole, in order: the seqs of the problems the walk
        found, and the record just past each span no anchor vouched for (`discount`: a chain
        hashed again, cut or appended to without the key, which no link shows; the records
        in it are not intact, whatever their links, the one past it an open's own); and the
        seqs of the problems alone (the records not intact as walked)."""
        with self._lock:
            problems = frozenset(self._problems)
            return sorted({*problems, *(upto + 1 for _, upto in self._unvouched)}), problems

    def data_break(self) -> int | None:
        """The first place the walked chain is not whole (`breaks`: a problem the walk found,
        or the record past a span no anchor vouches for), if any. Data labels fail closed
        from then on (`broker.store.label_ceiling`): records removed, moved below the seq
        walked, edited or counted for nothing there may have labelled any data at rest, and
        nothing left names which; in shared mode, a peer's published anchor off the walked
        chain too (`peer_anchors`: its records cut from the very end, no link broken). Read
        without the lock: each only grows."""
        cut = self._anchors.cut if self._anchors is not None else None
        firsts = [*self._problems[:1], *(upto + 1 for _, upto in self._unvouched),
                  *([] if cut is None else [cut])]
        return min(firsts) if firsts else None

    def named_labels(self) -> frozenset[str]:
        """Every label name a walked record names (in any label list: over-labelling)."""
        with self._lock:
            return self._labels.named.names()

    def discount(self, spans: list[Span], anchored: int | None = None) -> None:
        """The spans of records no anchor vouches for, as the capability vouching settled
        them (`capvouch.CapDigests.settle`: the writer's at its open, the standing
        `caps.unvouched` notes'), and the last record the anchor vouches for: what ends,
        takes an end back or makes a child in a span counts for nothing in `ended`; a
        take-back counts only as a grant vouches, the chain whole from it to `anchored` (a
        note unseated by a broken link after it leaves its span's refusals counting for
        nothing still: failing closed, the end stands)."""
        self._unvouched, self._anchored = tuple(spans), anchored
        self._ends.forget()

    def ending(self, span: Span) -> list[int]:
        """The seqs of the walked records in `span` that end a process, take an end back or
        make a child, and some that label one (for the `caps.unvouched` note: a label in its
        span counts for nothing at later opens either)."""
        seqs = self._ends.seqs
        return sorted({*seqs[bisect_right(seqs, span[0]):bisect_right(seqs, span[1])],
                       *self._labels.seqs_in(span), *self._data.seqs_in(span)})

    def ended(self, pid: int) -> int | None:
        """The seq of the walked record that ended process `pid`, if one did (and counts)."""
        with self._lock:  # (the ends weighed are kept: never while a walk adds to them)
            return self._ends.ended(pid, self._counts)

    def lineage(self) -> dict[int, list[int]]:
        """Each parent's children as the walked records that count made them (a kill ends
        these: `ProcessEnds.ended`)."""
        with self._lock:
            return self._ends.lineage(self._counts)

    def bound(self, pid: int) -> tuple[str | None, Any] | None:
        """The result digest (`ends.RESULT_DIGEST`) and exit code process `pid`'s counted end
        records, if it carries a digest (`ProcessEnds.bound`)."""
        with self._lock:
            return self._ends.bound(pid, self._counts)

    def recorded(self, pid: int) -> bool:
        """Does a counted walked record make process `pid` or end it (`ProcessEnds.recorded`)?"""
        with self._lock:
            return self._ends.recorded(pid, self._counts)

    def labels(self, pid: int) -> frozenset[str]:
        """The labels the walked records that count show process `pid` had
        (`broker.store.chain_labels`): a floor for its label, counted as an end is."""
        with self._lock:
            return self._labels.labels(pid, lambda seq: self._counts(seq, END))

    def data_labels(self, key: DataKey) -> frozenset[str]:
        """The labels the walked records that count show data at rest was written with
        (`broker.store.data_labels`): a floor for its label, counted as an end is, from the
        records before this store's open (none before its first walk). Read without the
        walk's lock: nothing walked after the first walk changes what it keeps (but in a
        chain brokers share, where a peer's records since are walked first and add)."""
        opened = self._opened
        if opened is None:
            return frozenset()
        if self.signatures is None:
            return self._data.labels(key, lambda seq: seq <= opened and self._counts(seq, END))
        # Shared: a peer broker writes while this one runs (its rows as anyone's), so the
        # records since are walked too; one past the open only adds (a forgery over-labels).
        self.walk_anchored()
        with self._lock:
            return self._data.labels(key, lambda seq: seq > opened or self._counts(seq, END))

    def narrowed(self, key: DataKey, replaced_at: int | None = None) -> int:
        """Shared mode: this broker narrowed `key`'s row to the writer's of the replace whose
        intent is at seq `replaced_at`; what records from it on show written there counts at
        its reads (`data_labels_since`: a peer's labelled append, its row edited, is not
        missed, nor one whose record landed between the replace and the narrowing, nor one
        in flight at the replace: the walk keeps every label anew from each replace of a
        labelled file on, `DataLabels.see`). None: from the records walked so far (a caller
        with no replace). A single writer's rows are its own while it runs: 0, nothing
        walked."""
        if self.signatures is None:
            return 0
        if replaced_at is not None:
            return replaced_at - 1  # (the writes in flight at it are kept at its seq)
        self.walk_anchored()
        with self._lock:
            self._data.restart(key)
            return self._linked[0]

    def data_labels_since(self, key: DataKey, seq: int) -> frozenset[str]:
        """Shared mode: the labels the records after `seq` show `key`'s data was written with
        (walked first: a peer's since); none for a single writer."""
        if self.signatures is None:
            return frozenset()
        self.walk_anchored()
        with self._lock:
            return self._data.labels(key, lambda walked: walked > seq)

    def held(self, pid: int) -> int | None:
        """Shared mode: the seq of the first record past the chain's `audit.signed` marker
        that would end process `pid` but carries no trusted signature, if no signed one ends
        it (`ended`). Its writer is unknown (a genuine end stripped of its signature, or a
        forgery): the process is held, neither ended (nothing of the record is taken) nor
        run."""
        if self.signatures is None or not self.signatures.unsigned:
            return None
        with self._lock:
            if self._ends.ended(pid, self._counts) is not None:
                return None
            return self._ends.ended(pid, self._unsigned_counts)

    def holding(self, seqs: Iterable[int]) -> list[int]:
        """The processes the walked ends among `seqs` name (those an unsigned one holds)."""
        return sorted({self._ends.ending[s] for s in seqs if s in self._ends.ending})

    def _unsigned_counts(self, seq: int, kind: str) -> bool:
        """`_counts`, but an end (or a birth) lacking its signature counts, wherever it lies
        (an unvouched span too: failing closed, it holds); a refusal never does without one
        (a forged take-back must not revive)."""
        return (kind != TAKE_BACK and not self._signed(seq)) or self._counts(seq, kind)

    def _unvouched_at(self, seq: int) -> bool:
        return any(after < seq <= upto for after, upto in self._unvouched)

    def _counts(self, seq: int, kind: str) -> bool:
        head = self._mine()
        if (head is not None and seq > head[0]) or self._unvouched_at(seq) or not self._signed(
                seq):
            return False
        # (A refusal or a digest counts only where the chain is whole from the record itself
        # on: one edited in place, its hash column left, links whole past it, and its only
        # problem is its own, red team 20; failing closed, the end stands, binding nothing.)
        if kind == BINDS:  # (no in-flight head to link to: a digest binds once walked)
            return self._whole_after(seq - 1, self._anchored)
        return kind != TAKE_BACK or (self._whole_after(seq - 1, self._anchored)
                                     and self._linked_to(head))

    def _linked_to(self, head: tuple[int, str] | None) -> bool:
        """Did the walk link up to `head`, the single writer's in memory (None: not one), as
        its hash is there? A take-back counts only so: the writer's newest records rewritten
        in place (rehashed, each linked to the one before) are whole as the walk finds them.
        One not walked yet (its commit still due) fails closed: the end stands."""
        return head is None or self._tail.get(head[0], self._linked[1] if self._linked[0] ==
                                              head[0] else None) == head[1]

    def _signed(self, seq: int) -> bool:
        """Not a vouching record that lacks the signature shared mode requires."""
        return self.signatures is None or seq not in self.signatures.unsigned

    def vouches(self, stored: StoredRecord, anchored: int | None = None) -> bool:
        """May this record vouch? Only one walked as it is now, with no problem found after
        it up to `anchored` (the last record the anchor vouches for; None: the head). Its
        own link broken says nothing of it: it is the one its successors chain to."""
        return (self._walked.get(stored.seq) == stored.hash and self._signed(stored.seq)
                and self._whole_after(stored.seq, anchored) and (
                    stored.record.syscall not in _INHERITING or self._whole_before(stored)))

    def _whole_before(self, stored: StoredRecord) -> bool:
        """No problem found before a record that makes a child, from the first record that
        made its lineage on (`ProcessEnds.first_birth`): those are the records that can show
        the label it inherits. An older one, in records no ancestor's, says nothing of it (it
        disarmed every child made after it, for ever: red team 18)."""
        child = birth(stored)[1]
        with self._lock:
            since = 0 if child is None else self._ends.first_birth(child)
        at = bisect_left(self._problems, since)
        return at == len(self._problems) or self._problems[at] > stored.seq

    def _whole_after(self, seq: int, anchored: int | None) -> bool:
        """No problem found after `seq` up to `anchored` (None: the head)."""
        after = bisect_right(self._problems, seq)
        return after == len(self._problems) or (
            anchored is not None and self._problems[after] > anchored)


def _noting(records: Iterable[StoredRecord], first: int, tail: dict[int, str]
            ) -> Iterator[StoredRecord]:
    """`records`, the hash of each from seq `first` on kept in `tail`."""
    for stored in records:
        if stored.seq >= first:
            tail[stored.seq] = stored.hash
        yield stored
