"""Records that vouch, signed by the broker that wrote them (docs/DESIGN.md, invariants 15
and 16), where brokers share one PostgreSQL store.

A single writer refuses every vouching record past the head its anchor covers; brokers
sharing a chain cannot (another broker's records lie past it within its signing interval,
and each appends after whatever the head is), and a record's hash is unkeyed: a database
writer could append one at the head that grants. So in shared mode each record that vouches
(`SIGNS`: it grants capability rows, makes a child, ends a process or takes an end back)
carries its writer's Ed25519 signature over its seq and hash, in the `sig` column ("<public
key> <signature>", hex): the hash covers the record's content and its place, so a signature
moved to another record does not hold. A loader in shared mode lets such a record vouch only
with a signature by a key it trusts (its own, those trusted with `libos keys trust`, and the
keys those endorsed in the chain's `audit.key` records).

Stores older than signing: the first shared open appends an `audit.signed` record (`MARKER`,
chained, so it cannot be taken away without breaking the links after it); vouching records
before the first one are an older broker's, taken as before (unsigned); from it on, unsigned
is unvouched. The marker is signed too: the first shared open that finds none signed by a key
it trusts (a chain older than signed markers, or only a writer's) appends one, and a reader
(`libos ps`) takes the chain for one brokers shared only with one (red team 22: a writer's
marker on a single broker's PostgreSQL store made `ps` say held of a process that runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.store import keys, marked, signing
from broker.store.audit import (
    ANCHOR_RECORD,
    GENESIS,
    KEY_RECORD,
    OUTCOME,
    AuditRecord,
    StoredRecord,
    is_broker_anchor,
    record_hash,
)
from broker.store.audit_rows import AUDIT_COLUMNS, stored_record
from broker.store.capvouch import VOUCHING
from broker.store.ends import ENDING

RECORD_DOMAIN = b"libos audit record v1\n"
MARKER = "audit.signed"  # from the first such record on, vouching records are signed
SIGNS = frozenset((*VOUCHING, *ENDING))
UNSIGNED = "caps.unsigned"  # a shared open's note of the records it finds unsigned (once)
# Signed too, though it vouches for nothing: a note names records no later open names again,
# so one a database writer appended (naming its own forgery) would silence them.
SIGNED = SIGNS | {UNSIGNED, MARKER}
# Outcomes signed too, though they vouch for nothing: one ends its write in flight to the
# labels' walk (`broker.store.data_labels`), which past the marker takes only a signed one
# (a writer's forged outcome of a peer's append would let a replace drop its labels: red
# team 30). Not in `SIGNS`: an unsigned one is no vouching record to note.
SIGNED_OUTCOMES = frozenset({"fs.write"})
MAX_NOTED = 64  # seqs a note names (the rest, at the next open)
# The records whose detail the links' walk reads (`AuditReads._linked_records`).
PARSED = SIGNS | {KEY_RECORD, UNSIGNED, MARKER}
_FIRST_MARKER = f"SELECT seq FROM audit WHERE syscall = '{MARKER}' ORDER BY seq LIMIT 1"
# The signed markers an open looks at for one a trusted key signed (a writer's many forged ones
# cost it this many verifications at most; past them, it appends its own).
MAX_MARKERS = 16
_SIGNED_MARKERS = (f"SELECT {AUDIT_COLUMNS}, sig FROM audit WHERE syscall = '{MARKER}' AND sig"
                   f" IS NOT NULL AND seq > 0 ORDER BY seq LIMIT {MAX_MARKERS}")
# What an open records before its marker (an anchor's problems, a key's rotation).
_OPENING = frozenset({ANCHOR_RECORD, KEY_RECORD})
_ANY_RECORD, _ANY_PROCESS = "SELECT 1 FROM audit LIMIT 1", "SELECT 1 FROM processes LIMIT 1"


def record_message(seq: int, digest: str) -> bytes:
    return RECORD_DOMAIN + f"{seq} {digest}".encode()


def sign_record(key: keys.AuditKey | None, record: AuditRecord, seq: int, digest: str
                ) -> str | None:
    """What a shared broker writes in a record's `sig` column: one that vouches (or notes
    unsigned ones), or a write's outcome (`SIGNED_OUTCOMES`), signed."""
    if key is None or not (record.syscall in SIGNED or (
            record.phase == OUTCOME and record.syscall in SIGNED_OUTCOMES)):
        return None
    return f"{key.public} {key.sign(record_message(seq, digest))}"


def key_endorsements(records: Iterable[StoredRecord]) -> list[signing.Endorsement]:
    """The endorsements in the chain's `audit.key` records (honoured only as the broker
    writes them, and each checked where it is used)."""
    found = []
    for stored in records:
        if is_broker_anchor(stored, KEY_RECORD):
            d = stored.record.detail
            found.append(signing.Endorsement(str(d.get("previous")), str(d.get("key")),
                                             str(d.get("endorsement"))))
    return found


def start_signing(store: Any) -> list[tuple[str, dict[str, Any]]]:
    """At a writer's open, before it appends anything: whether it signs the records that
    vouch (`store._signs`: a shared broker always; a single writer of a database once the
    chain has a `MARKER`, for the shared brokers that load its records later; never an SQLite
    store's), and what it appends first: a shared broker's, once per chain, the `MARKER` (a
    partial index finds it)."""
    if not store._publishes:
        return []
    has_marker = marked_chain(store)
    store._signs = store._shared or has_marker
    if store._shared and not store._query(_ANY_RECORD) and not store._query(_ANY_PROCESS):
        # (a store made again at the address: what was remembered of the old one is moot,
        # written over once this open finds the new marker; never deleted first: an open cut
        # off before that, the rows put back, would leave no memory: `broker.store.marked`)
        store.made_again = True
    if not store._shared or (has_marker and signed_marker(store)):
        return []
    return [(MARKER, {"signed": sorted(SIGNS)})]


def marked_chain(store: Any) -> bool:
    """Whether the chain has a `MARKER`: brokers shared it, and sign what vouches."""
    return bool(store._query(_FIRST_MARKER))


def signed_marker(store: Any) -> bool:
    """Whether one of the chain's first signed `MARKER`s carries a signature by a key this
    broker trusts directly (one a key endorsed since is not looked for: its broker's open
    appends one of its own)."""
    trusted = trusted_keys(store.signer)
    for row in store._query(_SIGNED_MARKERS):
        stored = stored_record(row, row["sig"])
        before = GENESIS if stored.seq == 1 else store.hash_at(stored.seq - 1)
        after = store._query("SELECT prev_hash FROM audit WHERE seq = ?", (stored.seq + 1,))
        if genuine_marker(trusted, stored, before) and all(
                r["prev_hash"] == stored.hash for r in after):
            return True
    return False


def genuine_marker(signers: set[str], stored: StoredRecord, before: str | None) -> bool:
    """`stored` is a `MARKER` a broker sharing this chain wrote here, as far as it and the
    record before it tell (whose hash is `before`; the record after it must link to it too):
    intact, linked, and signed by one of `signers`. The signature covers only its seq and
    hash: a trusted broker's signed record of another kind with its syscall column made a
    marker, or a marker copied from another chain at the same seq (a chain's first record
    links to nothing of it: the next one tells), is not one (red team 27: either made `ps`
    say held on a single broker's store)."""
    return (stored.record.syscall == MARKER and stored.prev_hash == before
            and record_hash(stored.seq, stored.ts, stored.record, stored.detail_json,
                            stored.prev_hash) == stored.hash
            and signed_by(signers, stored.seq, stored.hash, stored.sig))


def remembered_marker(store: Any, signatures: RecordSignatures) -> dict[str, object] | None:
    """After a shared open's walk: the marker found is remembered outside the database, if
    none was (`broker.store.marked`); the note of one remembered that moved, or None."""
    if signatures.remembered is None and signatures.found is not None:
        marked.remember(getattr(store, "marker_memory", None), signatures.found)
    store.made_again = False  # (a later verify reads the memory as it is now)
    return signatures.moved_note()


def trusted_keys(signer: str | None, given: Iterable[str] = ()) -> set[str]:
    """The keys whose signatures count, never read from the store: `signer` (this broker's),
    the local key's, those this user trusts (`libos keys trust`), and `given`."""
    found = {k for k in (signer, keys.own_public()) if k is not None}
    return found | set(keys.trusted_keys()) | set(given)


def signed_by(signers: set[str], seq: int, digest: str, sig: object) -> bool:
    """`sig` (a record's column: "<public key> <signature>") is a signature over `seq` and
    `digest` by one of `signers`."""
    key, _, signature = (sig if isinstance(sig, str) else "").partition(" ")
    if not (signing.is_hex(key, signing.KEY_HEX) and key in signers
            and signing.is_hex(signature, signing.SIGNATURE_HEX)):
        return False
    public = _public(key)
    try:
        if public is None:
            return False
        public.verify(bytes.fromhex(signature), record_message(seq, digest))
    except InvalidSignature:
        return False
    return True


@lru_cache(maxsize=64)
def _public(key: str) -> Ed25519PublicKey | None:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
    except ValueError:
        return None


class RecordSignatures:
    """Which vouching records a loader (or a verifier) in shared mode may take: signed by a
    trusted key, or an older broker's (before the chain's first `MARKER`). Fed the records in
    order (`see`), as the links' walk meets them."""

    def __init__(self, trusted: Iterable[str], remembered: marked.Marker | None = None,
                 made_again: bool = False) -> None:
        self._trusted = {k for k in trusted if signing.is_hex(k, signing.KEY_HEX)}
        # The keys whose signatures count: the trusted ones and those they endorsed (in the
        # chain's `audit.key` records so far), grown as each endorsement is met: each is
        # verified once (a cache cleared at each `audit.key` record, each signer then looked
        # up over every endorsement again, let a writer make a shared open quadratic).
        self._reach = set(self._trusted)
        self._waiting: dict[str, list[str]] = {}  # keys endorsed by a key not reached yet
        self.marker: int | None = None  # the seq of the chain's first `MARKER`
        self.found: marked.Marker | None = None  # its seq and hash
        # The first marker this broker found before (`broker.store.marked`), and whether a
        # trusted note named it missing or moved already.
        self.remembered = remembered
        self._moved_noted = False
        # The store was found made again at this open (no record, no process row): what is
        # remembered is moot only if nothing but an open's own notes (`_OPENING`) came before
        # the marker found (no rows a writer put back while the open looked).
        self._made_again, self._fresh = made_again, True
        # Whether the record at the remembered seq is the marker remembered (None: not met
        # yet), and the vouching records before it lacking a signature (an older store's):
        # its hash covers them all, so a marker moved or hashed anew leaves them unsigned too.
        self._intact: bool | None = None
        self._before: list[int] = []
        self.unsigned: set[int] = set()  # the vouching records past it not signed so
        self._noted: set[int] = set()  # those a `caps.unsigned` note named already
        # Whether a `MARKER` so far is signed by a trusted key: a broker that shared the
        # chain wrote it (a reader asks, `revived.held_ends`; a writer's is not signed so).
        self.signed_marker = False
        self._last = GENESIS  # the hash of the record seen last (the walk sees them in order)
        self._marker_seen: tuple[int, str] | None = None  # (the seq after it, its hash)

    def see(self, stored: StoredRecord) -> None:
        syscall = stored.record.syscall
        before, self._last = self._last, stored.hash
        if self._marker_seen is not None:  # (the record after a genuine marker links to it)
            self.signed_marker = (stored.seq, stored.prev_hash) == self._marker_seen
            self._marker_seen = None
        if (syscall == MARKER and not self.signed_marker
                and genuine_marker(self._reach, stored, before)):
            self._marker_seen = (stored.seq + 1, stored.hash)
        fresh = self._fresh
        self._fresh = fresh and syscall in _OPENING
        kept = self.remembered
        if kept is not None and self._intact is None and (
                stored.seq >= kept[0] or syscall == MARKER):
            self._intact = (stored.seq, stored.hash) == kept
            if not self._intact:  # (rewritten at or before it: what came before is not
                self.unsigned.update(self._before)  # an older store's as it was)
            self._before = []
        if syscall == KEY_RECORD:  # (a rotation: the keys a trusted one endorsed count)
            for endorsement in key_endorsements([stored]):
                if endorsement.holds():
                    self._endorse(endorsement.previous, endorsement.key)
        elif syscall == UNSIGNED and is_broker_anchor(stored, UNSIGNED) and self.holds(stored):
            named = stored.record.detail.get("records")
            if isinstance(named, list):
                self._noted.update(s for s in named if type(s) is int)
            moved = stored.record.detail.get("marker")
            self._moved_noted |= isinstance(moved, list) and tuple(moved) == self.remembered
        elif syscall == MARKER and self.marker is None:
            self.marker, self.found = stored.seq, (stored.seq, stored.hash)
            if self._made_again and fresh:  # (a new store: the old one's marker is moot)
                self.remembered = None
        elif syscall in SIGNS and (self._required(stored.seq) or self._intact is False
                                   ) and not self.holds(stored):
            self.unsigned.add(stored.seq)
        elif syscall in SIGNS and self.remembered is not None and not self.holds(stored):
            self._before.append(stored.seq)  # (until the remembered marker is met)

    def _required(self, seq: int) -> bool:
        """Must the vouching record at `seq` be signed: past the chain's first marker, or
        from the one this broker remembers on (whatever the chain now says)."""
        return self.marker is not None or (
            self.remembered is not None and seq >= self.remembered[0])

    def moved_note(self) -> dict[str, object] | None:
        """What a shared open records (`UNSIGNED`, once) of a marker it remembered that the
        chain no longer has where it was, or None."""
        problem = self.moved()
        if problem is None or self._moved_noted:
            return None
        return {"marker": list(self.remembered or ()), "problem": problem}

    def moved(self) -> str | None:
        """The problem of a marker remembered that the chain no longer has where it was (a
        verifier names it every time), or None."""
        kept = self.remembered
        if kept is None or self.found == kept:
            return None
        now = "is missing" if self.found is None else f"is record {self.found[0]}"
        return (f"record {kept[0]}: this broker found the chain's first {MARKER} marker there"
                f" (remembered outside the database), but it {now}: its row was deleted or"
                f" the chain rewritten from before it; records that vouch, from {kept[0]} on"
                " and before it (its hash covered them), count only signed by a key trusted"
                " here")

    def note(self, holding: Callable[[list[int]], list[int]] = lambda seqs: []
             ) -> dict[str, object] | None:
        """What a shared open records (`UNSIGNED`) of the unsigned records no note named yet
        (at most `MAX_NOTED`), or None: each is named once, and refused at every load;
        `holding`, the processes those that end one name (held: `ChainLinks.held`)."""
        new = sorted(self.unsigned - self._noted)[:MAX_NOTED]
        if not new:
            return None
        note: dict[str, object] = {"records": new, "problem": (
            f"records {new[0]} to {new[-1]}: {len(new)} records that vouch (grant, make a"
            " child, end a process or take an end back) carry no signature by a key this"
            " broker trusts: appended without a broker's key (or stripped of it), they vouch"
            " for nothing")}
        held = holding(new)
        if held:
            note["held"] = held
            note["problem"] = str(note["problem"]) + (
                f"; the processes they would end are held, neither ended nor run: {held}")
        return note

    def trusts(self, key: str) -> bool:
        """A signature by `key` counts here (a trusted key, or one it endorsed so far)."""
        return key in self._reach

    def holds(self, stored: StoredRecord) -> bool:
        """`stored` carries a signature over its own seq and hash by a trusted key."""
        return signed_by(self._reach, stored.seq, stored.hash, stored.sig)

    def _endorse(self, previous: str, key: str) -> None:
        if previous not in self._reach:
            self._waiting.setdefault(previous, []).append(key)
            return
        frontier = [key]
        while frontier:
            reached = frontier.pop()
            if reached not in self._reach:
                self._reach.add(reached)
                frontier.extend(self._waiting.pop(reached, ()))
