"""The labels the audit chain records of data at rest (docs/DESIGN.md, invariant 19): a
file's (`file_labels`: its own, and a directory's listing), an object's (`objects`), a
message's (`mailbox`) and an event's (`raised`).
Collected by the links' one walk (`broker.store.links.ChainLinks`) beside the processes'
(`broker.store.chain_labels`), so a read never takes the data's label from its row alone (a
row is anyone's who writes the database: a label dropped from it lets a process read the data
without taking the label on, and send it where the label's bound forbids).

A write's intent (a whole record's `args_labels`) names the labels of the data it carries
(`broker.kernel.dispatch`), which the handler keeps with the data before the effect
(`broker.syscalls.fs`, `broker.syscalls.obj`). So what a write's record names is a floor for
the label of what it wrote, kept per file path, object name (not per version), mailbox and
event name, and joined into the row's at every read (`broker.store.labels`,
`broker.store.objects`, `broker.store.durable`). It only over-labels: an object's version, a
message or an event sent after a labelled one, an intent whose call failed, carry the labels
of what was written there before the open (failing closed; a receiver that took a labelled
message has its label already, invariant 19). A file replaced (not appended to) by a call that
succeeded holds only its writer's data, as its row is narrowed: its floor is what was written
from the last replace on, if that replace's record counts, else every write's. Counted as a
process's labels are (not past the anchored head, not in an unvouched span), and only records
before this store's open (`ChainLinks.data_labels`): a forged record could only add a label.
In a chain brokers share, a peer's records since the open are walked too, adding only (a file
this broker narrows counts them from its replace's intent on, with the writes in flight then:
past the marker, a write is in flight until an outcome a trusted key signed, `recordsig`);
and a replace past the chain's `audit.signed` marker never narrows (unsigned, no anchor vouches for
a peer's records: a writer could forge it; red team 21). Records a writer removed leave no
trace here: once the walk finds the chain broken, reads take the label ceiling instead
(`broker.store.label_ceiling`; red team 23).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.store.audit import INTENT, OUTCOME, WHOLE, StoredRecord
from broker.store.audit_rows import seq_in
from broker.store.chain_labels import LISTS, MARK, named, parsed
from broker.store.marked import Marker
from broker.store.recordsig import MARKER
from broker.store.stretch_firsts import STRETCH_ENDS, StretchFirsts

FILE, OBJECT, MAILBOX, EVENT = "file", "object", "mailbox", "event"
# (FILE, a global virtual path), (OBJECT, "ns/name"), (MAILBOX, its pid), (EVENT, "event:name")
DataKey = tuple[str, str]
MAX_IN_FLIGHT = 4096  # labelled writes' intents awaiting their outcome, kept one by one


def parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def ancestors(path: str) -> list[str]:
    """The directories above `path`, below the root, outermost first."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _listings(paths: list[str]) -> list[DataKey]:
    return [(FILE, parent(path)) for path in paths]


# A writing syscall: the keys a record of it labels, from its resource (and whether it asked
# for parents: `fs.mkdir`'s directories made above are named in their parents too).
_WRITES: dict[str, Callable[[str, bool], list[DataKey]]] = {
    "fs.write": lambda path, _: [(FILE, path), *_listings([path])],
    "fs.mkdir": lambda path, parents: _listings([*(ancestors(path) if parents else ()), path]),
    "fs.remove": lambda path, _: _listings([path]),
    "obj.put": lambda name, _: [(OBJECT, name)],
    "proc.send": lambda pid, _: [(MAILBOX, pid)],
    "proc.raise": lambda event, _: [(EVENT, event)],
}


class DataLabels:
    """(kind, key) -> label -> the seq of the first record in each stretch that carries it:
    every such record's (`_all`), and a replaced file's from its last replace on (`_since`)."""

    def __init__(self, remembered: Callable[[], Marker | None] = lambda: None,
                 signed: Callable[[StoredRecord], bool] | None = None) -> None:
        self._all: StretchFirsts[DataKey] = StretchFirsts()
        self._since: StretchFirsts[DataKey] = StretchFirsts()
        self._replaced: dict[DataKey, int] = {}  # a file's last replace: its outcome's seq
        self._replacing: dict[int, tuple[DataKey, Any]] = {}  # an intent's seq: file, labels
        # Labelled writes of a file whose outcome is not walked yet, by their intent's seq
        # (their effect may follow a later replace's): from the chain's start, so one in
        # flight at the open counts too (red team 30). Past `MAX_IN_FLIGHT` (a flood of
        # intents no outcome follows) the oldest's labels stay with its file for good
        # (`_stuck`: over-labelled, bounded by the files and their labels).
        self._in_flight: dict[int, tuple[DataKey, Any]] = {}
        self._stuck: dict[DataKey, set[str]] = {}
        self.closed = False  # (`close`d after the open's walk: no later record counts)
        self.adding = False  # (shared mode, after the open: later records only add labels)
        self._open_seq = 0
        # Past the chain's `MARKER` brokers shared it: an unsigned record there is vouched by
        # no anchor (a peer's, or a writer's forgery), so a replace narrows nothing. Sharing
        # began at the earlier of the marker walked and the one remembered (its seq): a marker
        # row deleted or rewritten away leaves the records past it marked still. Its hash
        # covers every record before it: not found as remembered, no replace narrows (a
        # writer's could lie before it too; red team 23).
        self.marked = False
        self._remembered = remembered
        self._intact: bool | None = None  # (whether the record at its seq is it: None, not met)
        # Shared mode: whether a record carries a trusted key's signature (`recordsig`): past
        # the marker only a signed outcome ends a write in flight (a writer's forged one
        # would let a replace drop a peer's labels: red team 30; one unsigned leaves it in
        # flight, over-labelled). None: a single writer's walk, every outcome ends it.
        self._signed = signed

    def see(self, stored: StoredRecord) -> None:
        r, text = stored.record, stored.detail_json
        if self.closed:
            return
        if not self.adding:
            self._open_seq = stored.seq  # (the last record the open's walk reaches)
        if r.syscall in STRETCH_ENDS:
            self._all.end_stretch()
            self._since.end_stretch()
            return
        kept = self._remembered()  # (the signatures' view: a store made again forgets it)
        if kept is not None and self._intact is None and (
                stored.seq >= kept[0] or r.syscall == MARKER):
            self._met_remembered((stored.seq, stored.hash) == kept)
        if r.syscall == MARKER or (kept is not None and stored.seq >= kept[0]):
            self.marked = True
        keys = _WRITES.get(r.syscall)
        if keys is None or not isinstance(r.resource, str):
            return
        if r.syscall == "fs.write":
            if self.adding:
                self._see_in_flight(stored, (FILE, r.resource))
            elif not self.marked:
                self._see_replace(stored, (FILE, r.resource))
            self._track_in_flight(stored, (FILE, r.resource))
        if r.phase not in (INTENT, WHOLE) or MARK not in text:
            return
        lists = LISTS.findall(text)
        mentioned = named(lists)  # (a superset of what it gives: `chain_labels`)
        if mentioned is not None and all(
                mentioned <= self._latest(key).kept(key) for key in keys(r.resource, True)):
            return  # (nothing it could give is new in this stretch: not parsed)
        if mentioned is not None and len(lists) == 1 and r.syscall != "fs.mkdir":
            labels: Any = sorted(mentioned)  # (its one list: its own, or the arguments')
            parents = False
        else:
            detail = r.detail or parsed(text)
            labels = _carried(r.phase, detail)
            args = detail.get("args")
            parents = isinstance(args, dict) and args.get("parents") is True
        for key in keys(r.resource, parents):
            self._keep(key, stored.seq, labels)

    def _keep(self, key: DataKey, seq: int, labels: Any) -> None:
        """After a shared open, a label kept anew past the open takes its last seq's place
        (every seq past the open counts at `data_labels`; the latest at `data_labels_since`):
        memory grows with the keys and labels, not with the replaces walked."""
        after = self._open_seq if self.adding else None
        self._all.keep(key, seq, labels, latest_after=after)
        if key in self._replaced:
            self._since.keep(key, seq, labels, latest_after=after)

    def _latest(self, key: DataKey) -> StretchFirsts[DataKey]:
        """What is kept of `key` from its last replace on (every record, if none)."""
        return self._since if key in self._replaced else self._all

    def restart(self, key: DataKey) -> None:
        """Keep the next record that labels `key` (a replace of it: what is written after
        counts from there, `ChainLinks.narrowed`)."""
        self._all.restart(key)
        self._since.restart(key)

    def _met_remembered(self, intact: bool) -> None:
        """The remembered marker's seq reached (or the walk's end): a marker moved, hashed
        anew or missing leaves every file's floor at every write's (failing closed)."""
        self._intact = intact
        if not intact:
            self._replaced.clear()

    def close(self, *, adding: bool = False) -> None:
        """Keep no record walked from now on, or (`adding`: a chain brokers share, whose
        peers write while this one runs) only what later records add, never what a later
        replace narrows; and drop what only a walk needs."""
        if self._remembered() is not None and self._intact is None:
            self._met_remembered(False)  # (the chain ends before it: cut off there)
        self.closed, self.adding = not adding, adding
        self._all.end_stretch()
        self._since.end_stretch()
        self._replacing = {}
        if not adding:
            self._in_flight, self._stuck = {}, {}

    def _track_in_flight(self, stored: StoredRecord, key: DataKey) -> None:
        """A labelled write's intent is in flight until its outcome is walked."""
        r = stored.record
        if r.phase == OUTCOME:
            if self._in_flight:
                detail = r.detail or parsed(stored.detail_json)
                intent = seq_in(detail, "intent")
                if intent in self._in_flight and self._ends_write(stored, detail):
                    del self._in_flight[intent]
        elif r.phase == INTENT and MARK in stored.detail_json:
            labels = (r.detail or parsed(stored.detail_json)).get("labels")
            if labels and isinstance(labels, list):
                if len(self._in_flight) >= MAX_IN_FLIGHT:
                    oldest = next(iter(self._in_flight))
                    stuck, kept = self._in_flight.pop(oldest)
                    self._stuck.setdefault(stuck, set()).update(
                        label for label in kept if isinstance(label, str))
                self._in_flight[stored.seq] = (key, labels)

    def _ends_write(self, outcome: StoredRecord, detail: dict[str, Any]) -> bool:
        """An outcome ends its write in flight: any before the chain's marker (an older
        broker's, unsigned; its hash covers them), past it only one a trusted key signed
        that tells the effect settled. Not an `outcome unknown`: a lease takeover's
        (`recovery.close_open_intents`, signed by the taker) of a broker frozen, not dead,
        or whose lease row a writer expired, whose effect on the files is not fenced and may
        still land after a replace (red team 33); its write stays in flight, over-labelled,
        as one whose broker died does."""
        if self._signed is None or not self.marked:
            return True
        return not detail.get("unknown") and self._signed(outcome)

    def _see_in_flight(self, stored: StoredRecord, key: DataKey) -> None:
        """Shared, after the open: a labelled file's replace (anyone's) starts its labels
        anew, so every label a record after it carries is kept at that record's seq, and the
        labels of the writes of it in flight then (their intent walked, not their outcome:
        their effect may follow the replace's) are kept at the replace's intent. A narrowing
        this broker does counts the records from its replace's intent on
        (`ChainLinks.narrowed`): a peer's write whose effect follows the replace is not
        missed, however its records and the narrowing fall."""
        if self._replacing_detail(stored, key) is not None:
            self.restart(key)
            for labels in [*[labels for (written, labels) in self._in_flight.values()
                             if written == key], sorted(self._stuck.get(key, ()))]:
                self._keep(key, stored.seq, labels)

    def _replacing_detail(self, stored: StoredRecord, key: DataKey) -> dict[str, Any] | None:
        """A labelled file's replace (not an append): its intent's (or whole record's)
        detail."""
        if stored.record.phase not in (INTENT, WHOLE) or not self._all.holds(key):
            return None  # (an unlabelled file: nothing to narrow)
        detail = stored.record.detail or parsed(stored.detail_json)
        args = detail.get("args")
        if not isinstance(args, dict) or args.get("append", False) is not False:
            return None  # (an append, or a call whose arguments are not read whole)
        return detail

    def _see_replace(self, stored: StoredRecord, key: DataKey) -> None:
        """A labelled file replaced (not appended to) by a call that succeeded holds only its
        writer's data from then on, as its row is narrowed (`broker.syscalls.fs`)."""
        r = stored.record
        if r.phase == OUTCOME:
            if self._replacing:
                detail = r.detail or parsed(stored.detail_json)
                replacing = self._replacing.pop(seq_in(detail, "intent"), None)  # type: ignore[arg-type]
                if replacing is not None and replacing[0] == key and detail.get("ok") is True:
                    self._replace(key, stored.seq, replacing[1])
            return
        detail = self._replacing_detail(stored, key)
        if detail is None:
            return
        if r.phase == INTENT:
            self._replacing[stored.seq] = (key, detail.get("labels"))
        elif detail.get("ok") is True:
            self._replace(key, stored.seq, detail.get("args_labels"))

    def _replace(self, key: DataKey, seq: int, labels: Any) -> None:
        self._since.forget(key)
        self._since.keep(key, seq, labels)
        self._replaced[key] = seq

    def seqs_in(self, span: tuple[int, int]) -> set[int]:
        """The kept seqs in `span` (after, upto]: a record there labels data."""
        return self._all.seqs_in(span) | self._since.seqs_in(span) | {
            seq for seq in self._replaced.values() if span[0] < seq <= span[1]}

    def labels(self, key: DataKey, counts: Callable[[int], bool]) -> frozenset[str]:
        """The labels of `key`'s data that a counted record carries: from its last replace on
        if that counts, else every one (failing closed)."""
        if not self._all.holds(key):
            return frozenset()
        replaced = self._replaced.get(key)
        if replaced is not None and counts(replaced):
            return self._since.labels(key, counts)
        return self._all.labels(key, counts)


def _carried(phase: str, detail: dict[str, Any]) -> Any:
    """The labels of the data a write's record carries (its intent's, a whole record's)."""
    return detail.get("labels" if phase == INTENT else "args_labels")
