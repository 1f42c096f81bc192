"""Shared mode (PostgreSQL): the anchors peers published since this broker last looked,
told by the server, without a query (`broker.store.peer_anchors` checks them).

Each broker's upsert of its anchor notifies the brokers in the same statement (`PUBLISH`:
the row and the notice commit together), the notice carrying the anchor itself. This
broker's own session listens on that channel, so a notice committed before any of its
queries reaches it with that query's answer (the server sends it while the session is idle,
or when its statement ends): no round trip of its own, and what a notice carries stays
told even if a writer deletes or puts back the anchor's row before this broker reads it. A
session made again (its notices lost meanwhile), the first use, or more anchors worth
checking than it keeps (`MAX_KEPT`) send the caller to the table instead. Anyone may notify
the channel: an anchor told counts only as the table's would (its signature by a trusted
key). So a flood of notices never pushes out an anchor told (red team 32: a writer's flood
after the peer's notice, its row deleted, hid the cut): at `MAX_KEPT` those told are cut down
to the ones `worth` checking (`PeerAnchors.worth`: distinct, by a trusted key, verifying,
not known on the walked chain); only more than `MAX_KEPT` of those (a replay of that many
genuine anchors) still sends the caller to the table.

An anchor's signature covers its seq and hash only, and the user's one key signs every store
it writes: so a notice carries a second signature by the same key, over the store it was
signed for (as its server names it: the cluster's identifier and the database's oid,
`AuditReads.notice_store`; not the chain's first record, which a copy of the store starts
with too, red team 36), the signer's name, seq and hash (`signing.notice_message`), and a
told anchor is taken only where that holds (`Told.holds`): a genuine anchor of another
store, told here by anyone who can connect, is noise, not a cut (red team 32). A notice in
the older five-field shape (a peer of an earlier version) is noise too: that peer's anchors
are checked only when the table is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.errors import Conflict
from broker.store import signing
from broker.store.anchor import Signed
from broker.store.pg_connection import StoreUnavailable

CHANNEL = "libos_anchors"
# An upsert of this writer's row and a notice of it ("<signer> <seq> <hash> <key>
# <signature> <notice signature>", 400 bytes or so, under the server's 8000), at once; the
# row as the server wrote it returned, so the writer sees whether it was told as sent
# (`TELL` else). Functions named pg_catalog's: a writer's `public.concat_ws(text, text,
# bigint, ...)`, its argument types exact, won over pg_catalog's VARIADIC "any" one and made
# every notice noise (red team 35).
PUBLISH = (
    "WITH up AS (INSERT INTO anchors(signer, seq, hash, key, signature, at) VALUES (?,?,?,?,?,?)"
    " ON CONFLICT (signer) DO UPDATE SET seq=excluded.seq, hash=excluded.hash, key=excluded.key,"
    " signature=excluded.signature, at=excluded.at RETURNING signer, seq, hash, key, signature)"
    f" SELECT pg_catalog.pg_notify('{CHANNEL}', pg_catalog.concat_ws(' ', signer, seq, hash,"
    " key, signature, ?::pg_catalog.text)), signer, seq, hash, key, signature FROM up")
# The notice alone, when the upsert did not write the row as sent (`publish`).
TELL = f"SELECT pg_catalog.pg_notify('{CHANNEL}', ?)"


@dataclass(frozen=True, slots=True)
class Told:
    """An anchor as a notice told it: by `signer`, bound to a store by `bound` (the notice's
    signature, by the anchor's key)."""

    signer: str
    signed: Signed
    bound: str

    def holds(self, store: str | None) -> bool:
        """The notice was signed for `store` (as its server names it, `AuditReads.
        notice_store`; None: none)."""
        signed = self.signed
        return store is not None and signing.verifies(signed.key, self.bound, (
            signing.notice_message(store, self.signer, signed.seq, signed.hash)))


def publish(db: Any, signer: str, signed: Signed, at: object, key: Any, store: str | None
            ) -> None:
    """`signer`'s anchor upserted and told (`PUBLISH`), its notice signed by `key` (a
    `keys.AuditKey`) for `store` (`Told`), or told alone (`TELL`) when the row was kept out,
    changed or refused (a writer's trigger, rule or constraint on `anchors`: each hid the
    notice, and so a cut, red team 32); `Conflict` when not even that went."""
    bound = key.sign(signing.notice_message(store or "", signer, signed.seq, signed.hash))
    sent = (signer, signed.seq, signed.hash, signed.key, signed.signature)
    try:
        row = db.execute(PUBLISH, (*sent, at, bound)).fetchone()
    except StoreUnavailable:
        raise
    except Conflict:
        row = None
    if row is None or tuple(row)[1:] != sent:
        db.execute(TELL, (" ".join(map(str, (*sent, bound))),))
MAX_KEPT = 1024  # anchors told and not taken yet; past it, cut to those worth checking


class AnchorNotices:
    """Called before and after a walk: the peers' anchors told since the last call ([]:
    none), or None when the table must be read (what came cannot be told). `store`: a
    PostgreSQL store (its `_db` and `_lock`); `own`: this broker's identity (its own
    anchors are not a peer's)."""

    def __init__(self, store: Any, own: str) -> None:
        self._store, self._own = store, own
        self._session: Any = None  # the session listening
        self._told: list[Told] | None = None  # None: more than kept, or not listening
        # Those told worth checking (`PeerAnchors.worth`), asked at MAX_KEPT.
        self.worth: Callable[[list[Told]], list[Told]] = lambda told: list(
            dict.fromkeys(told))

    def __call__(self) -> list[Told] | None:
        with self._store._lock:  # (the notices come with a query: under this lock)
            db = self._store._db
            if db.raw is self._session and not db.raw.closed:
                told, self._told = self._told, []
                return told
            db.ready()  # (a broken session made again first)
            raw = db.raw
            raw.add_notify_handler(self._noted)
            db.execute(f"LISTEN {CHANNEL}")
            self._session, self._told = raw, []
            return None

    def _noted(self, notice: Any) -> None:
        fields = str(notice.payload).split(" ")
        # (ASCII digits only: `str.isdigit` takes a superscript two, which `int` refuses, and
        # an error raised here fails the query that brought the notice in, red team 32)
        if notice.channel != CHANNEL or len(fields) != 6 or fields[0] == self._own or (
                not (fields[1].isascii() and fields[1].isdigit()) or len(fields[1]) > 19):
            return  # (not a peer's anchor of this version: anyone's noise)
        told = self._told
        if told is None:
            return
        told.append(Told(fields[0], Signed(int(fields[1]), *fields[2:5]), fields[5]))
        if len(told) >= MAX_KEPT:  # (cut down, each told checked once: amortized)
            kept = self.worth(told)
            self._told = kept if len(kept) < MAX_KEPT else None
