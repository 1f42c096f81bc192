"""Shared mode: the walked chain's end against every trusted broker's newest published anchor
(docs/DESIGN.md, invariant 19 and §9 "Labels are coarse and beside the chain").

A database writer without the key who cuts a peer's records from the chain's very end before
this broker walked them breaks no link (nothing follows them; this broker's next append links
to what is left): the walk cannot see it, and a labelled write among them would read public.
Only the peer's signed anchor, published within a signing interval of its append, shows the
cut. So before each walk that data labels are read from (`ChainLinks.walk_anchored`), the
anchors peers published since are taken as the server told them (`broker.store.
anchor_notices`: no query; the `anchors` table is read at the first walk, and when what came
cannot be told), each naming records committed before it was published, so the walk that
follows reaches them; after the walk each one signed by a trusted key is checked to lie on
the walked chain: its record walked, with its hash. One past the walk's end, or at a record
of another hash, is a cut: a data break (`ChainLinks.data_break`), so data reads carry the
label ceiling from then on (`broker.store.label_ceiling`).

An anchor whose signature does not verify, or by a key this broker does not trust, is
anyone's to write (or notify): it is skipped (`libos audit --verify` names a row of it),
never a break. Still open: a cut made before the peer published its anchor (within its
signing interval); one made while this broker's session was lost or before it first looked,
with the peer's anchor row deleted, put back to an older one or pushed out of the rows read
(`chain.MAX_ANCHORS`); and a peer's anchor moved on to the cut chain by its next signature
then (it does not notice its own records gone).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from broker.store.anchor import Signed
from broker.store.anchor_notices import Told

# Reads of the anchors one walk makes at most, each after a notice came with the walk before:
# a peer that publishes while it walks is read once more, not without end.
LOOKS = 3
# The anchors remembered as checked (on the chain, or skipped): past it they are forgotten
# and checked again (a signature verified anew: a writer's junk rows cost only time).
MAX_REMEMBERED = 4096
# The walked records whose hashes are kept (the newest, at least): a peer's anchor told a
# moment after this broker walked its record is checked against the hash as walked, with no
# query (one older than these is read from the store: `hash_at`).
RECENT = 1024


class PeerAnchors:
    """The published anchors one walk checks. `published`: every broker's signed anchor as
    the store holds it; `trusts`: whether a key's signature counts here; `hash_at`: a stored
    record's hash (for an anchor of a record walked before it was read)."""

    def __init__(self, published: Callable[[], list[tuple[str, Signed]]],
                 trusts: Callable[[str], bool], hash_at: Callable[[int], str | None],
                 notices: Callable[[], list[Told] | None] = lambda: None) -> None:
        self._published, self._trusts, self._hash_at = published, trusts, hash_at
        self._notices = notices
        # This store as a notice names the one it was told for (`Told.holds`): as its server
        # names it (`AuditReads.notice_store`, set when the links are made).
        self.store: Callable[[], str | None] = lambda: None
        self._lock = threading.Lock()
        self._done: set[Signed] = set()  # checked: on the chain, untrusted or not verifying
        self._pending: dict[int, set[Signed]] = {}  # read, not checked yet, by seq
        self._seen: dict[int, str] = {}  # the hash a walk found at a pending seq
        self._recent: dict[int, str] = {}  # the hashes of the records walked last
        self.cut: int | None = None  # the seq of the first anchor found off the chain

    def read(self) -> bool:
        """Before a walk: the published anchors signed by a trusted key, not checked yet,
        wait for the walk (`see`) and then `settle`: those peers published since the last
        read, as the server told them (`notices`: `broker.store.anchor_notices`), or the
        table's when that cannot be told; whether any new one waits (anyone's junk told
        sends no walk round again, red team 32). One told is taken only where its notice was
        signed for this store (`Told.holds`), else skipped and not remembered: the genuine
        notice of the same anchor may follow."""
        # (named before the listening starts: `worth`, asked amid a query, never queries)
        store = self.store()
        told = self._notices()
        if told == []:
            return False
        found: list[tuple[Signed, Told | None]] = [
            (signed, None) for _, signed in self._published()] if told is None else [
            (notice.signed, notice) for notice in told]
        waits = False
        with self._lock:
            if len(self._done) >= MAX_REMEMBERED:
                self._done = set()
            for signed, notice in found:
                if signed in self._done or signed in self._pending.get(signed.seq, ()):
                    continue
                trusted = self._trusts(signed.key)
                if trusted and notice is not None and not notice.holds(store):
                    continue  # (another store's, or noise: not one of this store's anchors)
                if trusted and signed.verifies():
                    self._pending.setdefault(signed.seq, set()).add(signed)
                    waits = True
                else:
                    self._done.add(signed)
        return waits

    def worth(self, told: list[Told]) -> list[Told]:
        """Of the anchors told, those worth keeping until the next `read` (`anchor_notices`
        asks, past its bound: a flood of junk or of replays pushes no peer's genuine anchor
        out): each once, by a trusted key, not checked already, not of a record among the
        newest walked with its hash, and its notice for this store and its anchor verifying
        (checked last: they cost the most)."""
        recent, trusts, store = self._recent, self._trusts, self.store()
        with self._lock:
            done, pending = self._done, self._pending
            fresh = [notice for notice in dict.fromkeys(told) if trusts(notice.signed.key)
                     and recent.get(notice.signed.seq) != notice.signed.hash
                     and notice.signed not in done
                     and notice.signed not in pending.get(notice.signed.seq, ())]
        kept: dict[Signed, Told] = {}  # (one an anchor: told under other names, kept once)
        for notice in fresh:
            if notice.signed not in kept and notice.holds(store) and notice.signed.verifies():
                kept[notice.signed] = notice
        return list(kept.values())

    def see(self, seq: int, digest: str) -> None:
        """A walked record: its hash kept if an anchor read waits for it, and among the
        newest walked."""
        if seq in self._pending:
            self._seen[seq] = digest
        recent = self._recent
        recent[seq] = digest
        if len(recent) >= 2 * RECENT:  # (the older half let go: amortized, no per-record cost)
            self._recent = dict(list(recent.items())[RECENT:])

    def settle(self, walked: int) -> int | None:
        """After the walk, which reached seq `walked`: each anchor waiting is checked; the
        first cut found (kept for good), or None."""
        with self._lock:
            pending, seen = self._pending, self._seen
            self._pending, self._seen = {}, {}
        for seq, anchors in sorted(pending.items()):
            # (walked before it was read: as walked, or the stored hash the walk found intact)
            found = None if seq > walked else (
                seen.get(seq) or self._recent.get(seq) or self._hash_at(seq))
            if any(signed.hash != found for signed in anchors):
                self.cut = seq if self.cut is None else min(self.cut, seq)
        with self._lock:
            for anchors in pending.values():
                self._done.update(anchors)
        return self.cut
