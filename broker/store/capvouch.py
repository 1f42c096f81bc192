"""Capability rows as the audit chain vouches for them (docs/DESIGN.md, invariant 15).

Every record that creates `capabilities` rows carries, under `CAP_DIGESTS`, the sorted list
of one sha256 per row over the row's immutable fields (`cap_digest`: id, owner, handle, kind,
scope, rights, effect, expires, parent, args_hash, policy, whether `uses` counts; not the
count, which spends change):

- a host spawn or fork (`host.spawn`, `host.fork`): the new process's grants, in the
  transaction that grants them (`store.change_capabilities`);
- a child's spawn (`proc.spawn`): in its outcome, whose result is the child's pid;
- an answer that grants (`approval.answer`), in the transaction that applies it;
- an exec: the narrowed capabilities it adds, in a `caps.narrow` record written in the
  transaction that switches the image (`store.switch_image`).

A process whose creating record (its host spawn or fork, its `proc.spawn` outcome) carries
digests is *checked*: each of its rows must be one some intact record vouches for, else it
is planted or edited. Rows of a process created before records carried digests cannot be
checked, and are not failed. `libos audit --verify` names such a row; loading capabilities
(a kernel's open, a resume) leaves it out: the process holds less, never more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from broker.caps.capability import Capability
from broker.store.audit import WHOLE, AuditRecord, StoredRecord, canonical_json, is_intact


class Links(Protocol):
    """The chain's walk (`broker.store.links.ChainLinks`): may a record vouch?"""

    def vouches(self, stored: StoredRecord, anchored: int | None = None) -> bool: ...
    def spent(self, cap_id: str) -> int: ...
    def discount(self, spans: list[tuple[int, int]], anchored: int | None = None) -> None: ...
    def ending(self, span: tuple[int, int]) -> list[int]: ...

CAP_DIGESTS = "cap_digests"
# In the first host spawn or fork of a broker whose records carry digests: the processes
# made before (an older broker's), whose rows cannot be checked. Any other process no
# record created is planted, and holds nothing.
CAP_OLDER = "cap_older"
# In a `caps.unvouched` record: [after, upto], records the anchor did not vouch for when a
# writer opened the chain (appended by someone without its key): none of them vouch.
CAP_UNVOUCHED = "cap_unvouched"
# In a record that grants: the ids of the rows it creates whose deletion would widen (a
# deny or ask rule, an allow row that labels: `narrows`) and that no spend removes (no count
# of uses; a deny is never spent); in a `caps.revoke` or
# `caps.narrow`, the ids of the rows it removes. Such a row vouched for, missing and never
# removed, was deleted behind the chain's back: its process holds nothing.
CAP_ROWS = "cap_rows"
CAP_REMOVED = "cap_removed"
# In a `caps.narrow`: the ids of the rows the exec retires (kept with no uses, for lineage):
# nothing gives them uses again, so one stored with any was given them back.
CAP_RETIRED = "cap_retired"
# In a record that grants: the ids of the allow rows it creates that no spend removes (no
# count of uses). One deleted only narrows its process, so loading takes the rest; but
# `libos audit --verify` names it, and a process every row of which was deleted. (About
# half as much again as the digests: a grant's record grows with its rows either way.)
CAP_ALLOWS = "cap_allows"
# In a record that grants: each counted row's id and the uses it was granted. A row's count
# may only fall from there, by the spends the chain records (`links.ChainLinks.spent`); one
# stored higher was raised.
CAP_USES = "cap_uses"
# In a record that grants: each counted row uses were carved from (a `transfer` at a spawn or
# fork, an answer's grant carved from an `ask`) and how many it handed on, written in the
# transaction that stores its count (a child's: a `proc.spawn` record of phase `admin` there,
# `handed_record`, its outcome following): the walk counts them as spends, so a writer cannot
# give a parent back what it handed on, even one a crash cut off before its outcome.
CAP_HANDED = "cap_handed"
REVOKE = "caps.revoke"
# The records whose `pid` is the process they create (its grants: its first rows).
CREATES = ("host.spawn", "host.fork")
SPAWN = "proc.spawn"  # a child's: its outcome's result is the child's pid
NARROW = "caps.narrow"  # an exec's: the capabilities it adds
UNVOUCHED = "caps.unvouched"  # a kernel's open: records past the anchor vouch for nothing
# The records read to vouch for capability rows (a query selects them:
# `store.capability_vouches`, through the index `audit_vouching`).
VOUCHING = (*CREATES, SPAWN, "approval.answer", NARROW, UNVOUCHED, REVOKE)

def cap_digest(handle: str, cap: Capability, *, counted: bool | None = None) -> str:
    """The sha256 of a capability row's immutable fields: the same for the capability a
    grant stores and for its row read back. Its count of uses is spent, so not in it; but
    whether it has one is (`counted`, by default its own): a count edited away is no grant."""
    fields = {"id": cap.id, "owner": cap.owner, "handle": handle, "kind": cap.kind,
              "scope": cap.scope, "rights": sorted(cap.rights), "effect": cap.effect,
              "expires": cap.expires, "parent": cap.parent, "args_hash": cap.args_hash,
              "policy": None if cap.policy.empty else cap.policy.to_wire()}
    if cap.uses is not None if counted is None else counted:
        fields["uses"] = "counted"
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def _row_digests(handle: str, cap: Capability) -> tuple[str, ...]:
    """The digests a stored row may match: one retired (down to 0 uses, allowing nothing;
    an exec retires uncounted ones so) may have been granted with or without a count. Never
    a deny rule (kept by every exec, never spent: one down to 0 uses was edited so)."""
    if cap.uses == 0 and cap.effect != "deny":
        return cap_digest(handle, cap, counted=True), cap_digest(handle, cap, counted=False)
    return (cap_digest(handle, cap),)


def narrows(cap: Capability) -> bool:
    """Does this row take something away, so that losing it widens: a deny or ask rule, or
    an allow row that labels what it covers (every read of that data is labelled by it,
    whichever row allows the read)?"""
    return cap.effect != "allow" or bool(cap.policy.attach)


def cap_digests(entries: Iterable[tuple[str, Capability]]) -> list[str]:
    return sorted(cap_digest(handle, cap) for handle, cap in entries)


def vouch_for(detail: dict[str, Any], entries: Iterable[tuple[str, Capability]],
              carved: Iterable[Capability] = ()) -> None:
    """A record's detail, made to carry the digests of the rows it creates, the ids of
    those whose deletion would widen and the uses each of `carved` (the counted rows the
    grant takes uses from) hands to them (none: unchanged)."""
    entries = list(entries)
    _note_handed(detail, entries, carved)
    digests = cap_digests(entries)
    if digests:
        detail[CAP_DIGESTS] = digests
        for key, allow in ((CAP_ROWS, False), (CAP_ALLOWS, True)):
            rows = sorted(c.id for _, c in entries  # (a deny rule is never spent)
                          if (c.uses is None or c.effect == "deny") and narrows(c) != allow)
            if rows:
                detail[key] = rows
        uses = {c.id: c.uses for _, c in sorted(entries, key=lambda e: e[1].id)
                if c.uses is not None}
        if uses:
            detail[CAP_USES] = uses


def handed_record(parent: int, child: int, entries: list[tuple[str, Capability]],
                  carved: Iterable[Capability]) -> AuditRecord | None:
    """The record of the uses a child's spawn hands on from its parent's counted rows
    (`CAP_HANDED`), written with their lowered counts; None if it hands on none."""
    detail: dict[str, Any] = {"child": child}
    _note_handed(detail, entries, carved)
    if CAP_HANDED not in detail:
        return None
    return AuditRecord(phase="admin", syscall=SPAWN, pid=parent, detail=detail)


def _note_handed(detail: dict[str, Any], entries: list[tuple[str, Capability]],
                 carved: Iterable[Capability]) -> None:
    """The uses handed from each carved row: those of the counted rows derived from it (a
    deny derived from it is inherited, never carved)."""
    handed = {c.id: sum(e.uses or 0 for _, e in entries
                        if e.parent == c.id and e.effect != "deny") for c in carved}
    handed = {cap_id: n for cap_id, n in sorted(handed.items()) if n}
    if handed:
        detail[CAP_HANDED] = handed


def note_removed(detail: dict[str, Any], cap_ids: Iterable[str], key: str = CAP_REMOVED
                 ) -> None:
    """A record's detail, made to carry the ids of the rows it removes (or, by `key`,
    retires; none: unchanged)."""
    removed = sorted(cap_ids)
    if removed:
        detail[key] = removed


def span_note(store: Any) -> list[tuple[str, dict[str, Any]]]:
    """What a writer records at its open of the vouching records past the anchor (as a
    kernel's `load_vouched` does): one loading no capabilities signs the head, and the next
    open would take them as vouched."""
    if getattr(store, "unvouched_span", None) is None:
        return []
    note = store.capability_vouches().unvouched_note()
    return [] if note is None else [(UNVOUCHED, note)]


def _created(stored: StoredRecord) -> int | None:
    """The pid of the process a record creates, if it does."""
    r = stored.record
    if r.syscall in CREATES and r.phase == "admin":
        return r.pid
    result = r.detail.get("result")
    if (r.syscall == SPAWN and r.phase in ("outcome", WHOLE) and r.detail.get("ok")
            and isinstance(result, int) and not isinstance(result, bool)):
        return result
    return None


def _span(value: Any) -> tuple[int, int] | None:
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return value[0], value[1]
    return None


@dataclass(slots=True)
class CapDigests:
    """The capability rows the chain vouches for, and the processes whose rows are checked:
    fed the records in order (intact ones only count; `unvouched`: the span of records no
    anchor vouched for at this writer's open, which vouch for nothing; `links`: the chain's
    walk, without which no record vouches unless the chain is whole past it)."""

    unvouched: tuple[int, int] | None = None
    links: Links | None = None
    vouched: dict[str, int] = field(default_factory=dict)  # digest: the record's seq
    checked: set[int] = field(default_factory=set)
    older: set[int] = field(default_factory=set)  # processes made before digests
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # id: (owner, seq)
    allows: dict[str, tuple[int, int]] = field(default_factory=dict)  # the same, allow rows
    removed: set[str] = field(default_factory=set)
    retired: dict[str, int] = field(default_factory=dict)  # id: the exec's record's seq
    granted: dict[str, tuple[int, int]] = field(default_factory=dict)  # id: (uses, seq)
    # Records in `unvouched` that vouch, or end a process, take an end back or make a child
    # (`links.ending`), not yet in a `caps.unvouched` record's span.
    beyond: set[int] = field(default_factory=set)
    # A record of a vouching name that is not intact: edited, it may have carried digests,
    # so "no record carries digests" no longer says an older broker made every process.
    tampered: bool = False
    _notes: list[tuple[StoredRecord, tuple[int, int]]] = field(default_factory=list)
    _seen: list[StoredRecord] = field(default_factory=list)
    _named: list[int] = field(default_factory=list)  # every intact one's seq
    _standing: list[tuple[int, int]] = field(default_factory=list)  # the notes' spans

    def see(self, stored: StoredRecord) -> None:
        r = stored.record
        if r.syscall not in VOUCHING:
            return
        if not is_intact(stored):
            self.tampered = True
            return
        self._named.append(stored.seq)
        span = _span(r.detail.get(CAP_UNVOUCHED)) if r.syscall == UNVOUCHED else None
        if span is not None:
            self._notes.append((stored, span))  # (it follows what it covers: settled later)
        elif (isinstance(r.detail.get(CAP_DIGESTS), list) or CAP_REMOVED in r.detail
              or CAP_RETIRED in r.detail):
            self._seen.append(stored)

    def settle(self) -> None:
        """Once every record is seen (a span is recorded after the records it covers)."""
        seen, self._seen = self._seen, []
        spans = self._spans()
        unvouched = [s for s in (self.unvouched, *spans) if s is not None]
        named, self._named = self._named, []
        if any(a < seq <= u for seq in named for a, u in unvouched):
            # A record of a vouching name no anchor vouches for (the chain hashed again past
            # its anchor, or appended): that none carries digests says nothing of an older
            # broker, so rows are not taken as unchecked for it.
            self.tampered = True
        self._standing = spans
        if self.links is not None:  # (ends, take-backs and births count only outside them)
            self.links.discount(unvouched, self.unvouched[0] if self.unvouched else None)
        for stored in seen:
            if any(after < stored.seq <= upto for after, upto in unvouched):
                if self.unvouched and not any(a < stored.seq <= u for a, u in spans):
                    self.beyond.add(stored.seq)
                continue
            if self.links is not None and not self.links.vouches(
                    stored, self.unvouched[0] if self.unvouched else None):
                self.tampered = True  # (forged between records, or edited since the walk)
                continue
            self._vouch(stored)

    def _spans(self) -> list[tuple[int, int]]:
        """The spans of the `caps.unvouched` notes that stand: a note is the writer's, made
        just past the span it covers, so one that lies in an unvouched span itself (this
        open's, or a later note's: newest first), or that the chain is not whole after, was
        appended by someone without the key and says nothing (else it could take every
        genuine grant away for good)."""
        spans: list[tuple[int, int]] = []
        anchored = self.unvouched[0] if self.unvouched else None
        for stored, span in sorted(self._notes, key=lambda n: -n[0].seq):
            if any(a < stored.seq <= u for a, u in spans):
                continue
            if self.unvouched and self.unvouched[0] < stored.seq <= self.unvouched[1]:
                self.beyond.add(stored.seq)  # (this writer notes it: later opens too find
                # it in a span, and discount it)
                continue
            if self.links is not None and not self.links.vouches(stored, anchored):
                continue
            spans.append(span)
        return spans

    def _vouch(self, stored: StoredRecord) -> None:
        detail = stored.record.detail
        removed = detail.get(CAP_REMOVED)
        if isinstance(removed, list):
            self.removed.update(i for i in removed if isinstance(i, str))
        retired = detail.get(CAP_RETIRED)
        if isinstance(retired, list):
            self.retired.update((i, stored.seq) for i in retired if isinstance(i, str))
        if not isinstance(detail.get(CAP_DIGESTS), list):
            return
        for digest in detail[CAP_DIGESTS]:
            if isinstance(digest, str):
                self.vouched.setdefault(digest, stored.seq)
        uses = detail.get(CAP_USES)
        if isinstance(uses, dict):
            self.granted.update((i, (n, stored.seq)) for i, n in uses.items()
                                if type(n) is int and i not in self.granted)
        pid = _created(stored)
        if pid is not None:
            self.checked.add(pid)
        owner = stored.record.pid if pid is None else pid
        for key, into in ((CAP_ROWS, self.rows), (CAP_ALLOWS, self.allows)):
            rows = detail.get(key)
            if isinstance(rows, list) and isinstance(owner, int):
                into.update((i, (owner, stored.seq)) for i in rows if isinstance(i, str))
        older = detail.get(CAP_OLDER)
        if stored.record.syscall in CREATES and isinstance(older, list):
            self.older.update(p for p in older if isinstance(p, int))

    def unvouched_note(self) -> dict[str, Any] | None:
        """What a writer records (once: its span then covers them) of the vouching records
        no anchor vouched for at its open: none of them grants anything."""
        self.settle()
        if self.unvouched is None:
            return None
        if self.links is not None:  # (and those that end, take back or make a child)
            self.beyond.update(seq for seq in self.links.ending(self.unvouched)
                               if not any(a < seq <= u for a, u in self._standing))
        if not self.beyond:
            return None
        return {CAP_UNVOUCHED: list(self.unvouched), "problem": (
            f"record {min(self.beyond)}: {len(self.beyond)} records that vouch for capability"
            f" rows, end a process, take an end back or label one lie past the chain's anchor"
            f" (records {self.unvouched[0] + 1} to {self.unvouched[1]}): appended without its"
            " key, they grant nothing, end nothing and label nothing")}

    def problem(self, handle: str, cap: Capability) -> str | None:
        """What is wrong with a stored capability row, or None (vouched, or not checkable:
        its process made by an older broker, or every one was: no record carries digests)."""
        self.settle()
        what = (f"process {cap.owner}'s capability {cap.id} ({cap.kind}:{cap.scope}:"
                f"{','.join(sorted(cap.rights))}, {cap.effect}) is stored as held, but ")
        if cap.owner in self.checked:
            if cap.id in self.removed:  # (revoked, or deleted by an exec: never back)
                return what + "a record removed it (revoked): it was put back"
            if any(digest in self.vouched for digest in _row_digests(handle, cap)):
                if cap.uses != 0 and cap.id in self.retired:
                    return what + (f"with {cap.uses} uses, and record {self.retired[cap.id]}"
                                   " retired it (no uses left): its uses were given back")
                return self._raised(cap, what)
            return what + "no record in the audit granted it so: planted or edited"
        if cap.owner in self.older or not (self.checked or self.tampered):
            return None
        return what + f"no record in the audit created process {cap.owner}: planted"

    def _raised(self, cap: Capability, what: str) -> str | None:
        """A counted row holding more uses than its grant less the spends the chain records
        (the count is not in its digest: a writer could give a spent grant its uses back)."""
        if cap.uses is None or cap.id not in self.granted or self.links is None:
            return None
        granted, seq = self.granted[cap.id]
        spent = self.links.spent(cap.id)
        if cap.uses <= granted - spent:
            return None
        return what + (f"with {cap.uses} uses left, and record {seq} granted {granted} of "
                       f"which the audit records {spent} spent: its count was raised")

    def missing(self, present: Iterable[tuple[str, Capability]]) -> dict[int, str]:
        """The processes among `present`'s owners some row of which the chain vouches for
        (and whose deletion widens) is gone, never removed by a record (deleted behind its
        back), each with its problem."""
        self.settle()
        present = list(present)
        owners = {cap.owner for _, cap in present}
        found: dict[int, str] = {}
        for cap_id, owner, seq in self._gone({cap.id for _, cap in present}, self.rows):
            if owner in owners and owner not in found:
                found[owner] = (f"record {seq}: process {owner}'s capability {cap_id} is "
                                "missing, and no record removed it: deleted behind the "
                                "chain's back (a rule that narrows, deleted, widens); the "
                                "process holds nothing")
        return found

    def deleted(self, present: Iterable[str]) -> list[str]:
        """Every row the chain says was granted and never removed whose id is not `present`
        (`libos audit --verify`): an allow row's too (its process narrowed), and those of a
        process every row of which is gone."""
        self.settle()
        return [f"record {seq}: process {owner}'s capability {cap_id} is missing, and no "
                "record removed it: deleted behind the chain's back" + (
                    "" if cap_id in self.rows else " (an allow row: its process narrowed)")
                for cap_id, owner, seq in self._gone(set(present),
                                                     {**self.allows, **self.rows})]

    def _gone(self, stored: set[str], rows: dict[str, tuple[int, int]]
              ) -> Iterator[tuple[str, int, int]]:
        """(Settled by the caller: `rows` is one of what settling fills.)"""
        for cap_id, (owner, seq) in rows.items():
            if cap_id not in stored and cap_id not in self.removed:
                yield cap_id, owner, seq
