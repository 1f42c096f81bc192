"""The audit chain: appending hash-chained records (alone, with a capability use they spend,
or inside a transaction that changes other rows); reading them back is `AuditReads`.

One broker writes a store at a time (a lock file, or a PostgreSQL session lock), so the head is
kept in memory: one INSERT per record. The writer signs the head from time to time (`anchor`).

Many brokers sharing a PostgreSQL store (`shared`) append to one chain: each append is a write
transaction, which holds the store's write lock from its start, and checks the head in it, so
appends from every broker fall in one order, each linked to the one before. The check costs no
round trip of its own: an append links to the head this broker last knew (its own last append, or
the head a failed check reported) and the server checks, under the write lock, that the chain's
head is still that one (`_expect_head`); if another broker appended since, the transaction is
refused (`HeadMoved`, nothing written) and made again on the head the refusal names, and after
`GUESSES` refusals on the head read in the transaction itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from math import isfinite
from pathlib import Path
from typing import Any

from broker.caps.capability import Capability
from broker.errors import Conflict, InvalidArgument
from broker.store import anchor, anchor_notices, remembered, signing, verify
from broker.store.audit import ANCHOR_RECORD, GENESIS, KEY_RECORD, AuditRecord, record_hash
from broker.store.audit_reads import AuditReads
from broker.store.audit_rows import (
    AuditRows,
    RowsAtOnce,
    check_columns,
    check_no_nul,
    record_time,
)
from broker.store.capvouch import span_note
from broker.store.connection import Db, dump_json
from broker.store.keys import AuditKey
from broker.store.recordsig import sign_record, start_signing
from broker.store.refusals import RefusedBeside

# The published anchors read (one row per broker identity; rows beyond, anyone's to write,
# are not read: the newest are, and they decide what reaches the chain's end).
MAX_ANCHORS = 1024
# Appends tried on a known head before one reads the head in its transaction (a round trip
# more, with the write lock held) to be sure of its turn.
GUESSES = 2


class HeadMoved(Conflict):
    """Another broker appended first: nothing written; `head` is the head the server found."""

    def __init__(self, message: str, detail: str | None) -> None:
        super().__init__(message)
        seq, _, digest = (detail or "").partition(" ")
        self.head = (int(seq), digest) if seq.isdigit() and len(digest) == 64 else None


class AuditChain(RowsAtOnce, AuditReads):
    _head: tuple[int, str]  # (seq, hash) of the newest record
    # The newest record this writer knows committed (`_head` may be past rows waiting for a
    # commit): what a single writer finds the head to be when its connection is made again.
    _durable_head: tuple[int, str] | None = None
    # The head a write transaction's own (not deferred) records end at, until it ends: with
    # `_anchor_due`, what a commit whose answer was lost would have made the head.
    _writing_head: tuple[int, str] | None = None
    _key: AuditKey | None  # the writer's signing key
    _signed: tuple[int, str] | None = None  # the head as last signed
    _shared = False  # other brokers append to this chain too: its head is read, not kept
    # The writer publishes its signed anchor in the store's `anchors` table too, so that a
    # verifier on any host finds it (a database; an SQLite file's lock file is beside it).
    _publishes = False
    _published: anchor.Signed | None = None  # the anchor as last published
    _last_signed: anchor.Signed | None = None
    # Shared: the head this broker last knew (its own last append, or the head a refused
    # append found), which its next append links to if the server finds it still the head.
    _known: tuple[int, str] | None = None
    appends_redone = 0  # shared: appends refused because another broker's came first
    # The backend refuses text with a NUL character (PostgreSQL): such a record is refused
    # before it is chained, never left waiting for a commit that would fail each time.
    _refuses_nul = False
    unvouched_span: tuple[int, int] | None = None  # (after, upto]: unvouched at its open
    _memory: Path | None = None  # where a single writer remembers its anchor (`remembered`)

    def _check_anchor(self) -> None:
        """Opening as the writer: what does not hold between the chain and its (signed)
        anchor is recorded in the chain before anything else is appended; so is a rotation
        of the key that signed it (the old key's endorsement of this one). Then the head is
        signed with this broker's key."""
        key = self._key
        assert key is not None
        head, signed = anchor.read(self._anchor_path)
        self._memory = None if self._shared else remembered.place(key, self._memory_name)
        made_again = not (self._head[0] or self._query("SELECT 1 FROM processes LIMIT 1"))
        signed, lost = remembered.standing(self._memory, signed, self._head[0], self.hash_at,
                                           made_again=made_again)
        published = self._own_published()
        if signed is None and published is not None:
            signed = published  # a host new to the store: its own anchor there stands for it
            published = None
        steps: list[signing.Endorsement] = []

        def trusts(signer: str, *, note: bool = True) -> bool:
            path = signing.endorsement_path(signer, key.public, key.endorsements())
            steps.extend((path or []) if note else ())
            return path is not None

        def vouches(head: anchor.Head) -> bool:
            return head.mac is not None and hmac.compare_digest(
                head.mac, key.mac(head.seq, head.hash))

        found = lost + anchor.problems(head, signed, self._head[0], self.hash_at,
                                       trusts=trusts, vouches=vouches, tail=not self._shared)
        if found and not self._shared:  # (shared: other brokers' records are not its to vouch)
            self.unvouched_span = anchor.unvouched(head, signed, self._head[0], self.hash_at,
                                                   partial(trusts, note=False), vouches)
        if published is not None and published != signed:
            found += anchor.problems(None, published, self._head[0], self.hash_at,
                                     trusts=trusts, tail=False)
        for syscall, detail in [(ANCHOR_RECORD, {"problem": problem}) for problem in found] + [
                (KEY_RECORD, step.to_json()) for step in steps] + span_note(self) + (
                start_signing(self)):
            self.append_audit(AuditRecord(phase="admin", syscall=syscall, detail=detail))
        self.sign_anchor()

    def sign_anchor(self) -> None:
        """Sign the head, if it moved since it was last signed (a writer only)."""
        with self._lock:
            head = getattr(self, "_head", None)  # None: the store failed to open
            if self._lock_fd is None or self._key is None or head in (None, self._signed):
                return
            self.commit_deferred()  # what the head covers is committed before it is signed
            seq, digest = self._head
            signed = anchor.Signed(seq, digest, self._key.public,
                                   self._key.sign(signing.anchor_message(seq, digest)))
            anchor.write_signed(self._lock_fd, signed)
            remembered.remember(self._memory, signed)
            self._signed, self._last_signed = self._head, signed
        self._publish()

    def _publish(self) -> None:
        """Put the newest signed anchor in the store (where it publishes): an upsert of this
        writer's row, one statement. A store that cannot be reached now is tried again at the
        next signature; the anchor file on this host has it meanwhile."""
        try:  # (the store a peer's notice is bound to, `anchor_notices`: read, not locked)
            store = self.notice_store() if self._shared else None
        except Conflict:
            return
        with self._lock:
            signed = self._last_signed
            if not self._publishes or signed is None or signed == self._published:
                return
            try:  # (the peers told at once: `anchor_notices`)
                anchor_notices.publish(self._db, self._signer_name, signed, self._now(),
                                       self._key, store)
            except Conflict:  # (StoreUnavailable: the connection is made again next time)
                return
            self._published = signed

    @property
    def _signer_name(self) -> str:
        """This writer's row in `anchors`: its broker identity, '' for a single writer."""
        return getattr(self, "broker", None) or ""

    def published_anchors(self) -> list[tuple[str, anchor.Signed]]:
        """Every writer's signed anchor as the store holds it ((identity, anchor), '' for a
        single writer): checked by signature and key where it is used, never trusted here."""
        if not self._publishes:
            return []
        # Cut short by the database: a row's field may be as big as the database allows.
        rows = self._query("SELECT substr(signer, 1, 128) AS signer, seq, substr(hash, 1, 128)"
                           " AS hash, substr(key, 1, 128) AS key, substr(signature, 1, 256) AS"
                           " signature FROM anchors ORDER BY seq DESC, signer LIMIT ?",
                           (MAX_ANCHORS,))
        return [(str(r["signer"]), anchor.Signed(int(r["seq"]), str(r["hash"]), str(r["key"]),
                                                 str(r["signature"]))) for r in rows]

    def remembered_anchor(self) -> anchor.Signed | None:
        """The newest trusted anchor a verifier on this host saw (a store that publishes its
        anchors keeps it outside the database, see `broker.store.postgres`); None here."""
        return None

    def remember_anchor(self, signed: anchor.Signed) -> None:
        """Keep `signed` as the newest trusted anchor verified on this host (nothing here)."""

    def _own_published(self) -> anchor.Signed | None:
        return dict(self.published_anchors()).get(self._signer_name)

    def read_anchor(self) -> tuple[anchor.Head | None, anchor.Signed | None]:
        """The head and signed anchor in the lock file (a writer signs its head first)."""
        self.sign_anchor()
        return anchor.read(self._anchor_path)

    def broker_anchors(self) -> list[anchor.Anchor]:
        """The anchors of the brokers that share this chain, or of a writer that publishes
        its anchor in the store (none: one writer at a time, its anchor is `read_anchor`'s)."""
        return []

    @property
    def signer(self) -> str | None:
        """The public key (hex) this writer signs with; None on a read-only store."""
        return self._key.public if self._key is not None and self._lock_fd is not None else None

    def close(self) -> None:
        try:
            self.sign_anchor()  # (commits what was deferred first)
        finally:
            super().close()

    def hash_at(self, seq: int) -> str | None:
        rows = self._query("SELECT hash FROM audit WHERE seq=?", (seq,))
        return rows[0]["hash"] if rows else None

    def last_seq(self) -> int:
        return self._query("SELECT MAX(seq) AS seq FROM audit")[0]["seq"] or 0

    def audit_problems(self, *, after: int = 0, pid: int | None = None,
                       public_key: str | None = None, trust: Iterable[str] = ()
                       ) -> tuple[int, list[str]]:
        """Verify the audit (see `broker.store.verify`): the whole of it, or the stretch
        after `after` and what process `pid` stored beside it; the signed anchors with
        `public_key` (hex) alone, or by default with this user's keys (see
        `broker.store.keys.trusted_keys`); and with the keys in `trust` (hex) as well."""
        return verify.audit_problems(self, after=after, pid=pid, public_key=public_key,
                                     trust=trust)

    @property
    def head_seq(self) -> int:
        """The seq of the newest audit record this writer appended (or found); in a shared
        chain, the newest any broker appended."""
        return self.last_seq() if self._shared else self._head[0]

    def _head_in(self, db: Db, *, guess: bool = False) -> tuple[int, str]:
        """The head the next record follows, inside the write transaction `db`. When other
        brokers append too: read in it, or with `guess` the head this broker last knew, which
        the server checks in it (`HeadMoved` when the transaction ends, if it moved)."""
        if not self._shared:
            return self._head  # (past any deferred rows: written first, in `db`)
        known = self._known or self._head
        if guess and self._expect_head(db, known):
            return known
        row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def _expect_head(self, db: Db, head: tuple[int, str]) -> bool:
        """Have the server check, in transaction `db`, that the chain's head is `head`,
        refusing the transaction with `HeadMoved` if not; False: the backend cannot (the
        caller reads the head instead)."""
        return False

    def _appending(self, write: Callable[[Db, tuple[int, str]], tuple[int, str]]
                   ) -> tuple[int, str]:
        """Run `write(db, head)` (it appends after `head` and returns the new head) in a
        write transaction, again on the head found if another broker's append came first
        (see the module's docstring); the new head, committed."""
        for _ in range(GUESSES if self._shared else 0):
            try:
                with self.transaction() as db:
                    return write(db, self._head_in(db, guess=True))
            except HeadMoved as moved:
                self._known = moved.head
                self.appends_redone += 1
            except RefusedBeside:  # (as below: made again)
                pass
        while True:
            try:
                with self.transaction() as db:
                    self._writing_head = head = write(db, self._head_in(db))
                    return head
            except RefusedBeside:  # (a deferred write it carried was set aside, its owner
                continue  # told; nothing of this was written: made again, as it always can
                # be. Each time one fewer waits: never a loop. Not this caller's to fail: a
                # spend would read as "spent first by another", its call denied.)

    def append_audit(self, record: AuditRecord, *, spend: Capability | None = None,
                     spent_uses: int | None = None, payload: bytes | None = None,
                     defer: bool = False) -> int:
        """Append one record to the chain. With `spend`, use one of that capability's uses in
        the same transaction: the record and the spending stand or fall together, and a use
        that another writer took first makes this a `Conflict`. With `payload` (an outcome's
        full result, or a tool call's full arguments, for replay), keep it in the record's
        row. `defer`: committed with the next write (`_defer_rows`)."""
        self._require_writer()
        with self._lock:
            if spend is None and self._can_defer():
                row, head = self._chain_row(record, self._head, payload)
                if defer:
                    self._defer_rows([row], head)
                    return head[0]
                self._commit_rows([row], head)
            else:
                def write(db: Db, after: tuple[int, str]) -> tuple[int, str]:
                    row, head = self._chain_row(record, after, payload)
                    if spend is not None:
                        self._spend(db, spend, spent_uses)
                    db.execute(self.insert_audit, row)
                    return head

                head = self._appending(write)  # with any writes deferred to it
            self._move_head(head)  # after the commit
            return head[0]

    @staticmethod
    def _spend(db: Db, spend: Capability, spent_uses: int | None) -> None:
        left = spent_uses or 0
        cur = db.execute("UPDATE capabilities SET uses=? WHERE id=? AND uses=?",
                         (left, spend.id, left + 1))
        if cur.rowcount != 1:
            raise Conflict("capability use already spent")
        if not left:
            # Used up: gone, unless something derives from it. Then it is kept allowing
            # nothing, for the lineage (revoking an ancestor still reaches below) and so
            # what derives from it keeps the parent its grant's record vouches for.
            db.execute("DELETE FROM capabilities WHERE id=? AND NOT EXISTS"
                       " (SELECT 1 FROM capabilities c WHERE c.parent=?)", (spend.id, spend.id))

    def append_pair(self, intent: AuditRecord, outcome: AuditRecord,
                    payload: bytes | None = None, *, defer: bool = False) -> int:
        """An intent and its outcome in one transaction, written after the effect (for a
        syscall that changes nothing: a crash before the commit leaves neither, and nothing
        was shown to anyone). The outcome's detail gets `intent`: the intent's seq, which
        is returned; `payload` is the outcome's. `defer`: as `append_audit`'s."""
        self._require_writer()

        def rows(head: tuple[int, str]) -> tuple[list[tuple[Any, ...]], tuple[int, str]]:
            outcome.detail["intent"] = head[0] + 1
            ts = self._now()  # written together: one time for both
            intent_row, head = self._chain_row(intent, head, None, ts)
            outcome_row, head = self._chain_row(outcome, head, payload, ts)
            return [intent_row, outcome_row], head

        def write(db: Db, after: tuple[int, str]) -> tuple[int, str]:
            both, head = rows(after)
            db.executemany(self.insert_audit, both)
            return head

        with self._lock:
            if self._can_defer():
                both, head = rows(self._head)
                if defer:
                    self._defer_rows(both, head)
                    return head[0] - 1
                self._commit_rows(both, head)
            else:
                head = self._appending(write)
            self._move_head(head)
            return head[0] - 1

    def append_call(self, call: AuditRecord, payload: bytes | None,
                    inner: list[tuple[AuditRecord, bytes | None]], *, defer: bool = False
                    ) -> int:
        """A tool call's record, then the records `inner` made inside it (each gets the call's
        seq as its `inv`), all in one transaction (or all deferred to the next); the call's
        seq is returned. `payload`: the call's; each inner record's is beside it. For a call
        whose record waited (`broker.kernel.held_call.HeldCall`): nobody was shown any of
        them before this."""
        self._require_writer()

        def rows(head: tuple[int, str]) -> tuple[list[tuple[Any, ...]], tuple[int, str]]:
            ts = self._now()  # written together: one time for all
            row, head = self._chain_row(call, head, payload, ts)
            made = [row]
            for record, kept in inner:
                record.inv = made[0][0]
                row, head = self._chain_row(record, head, kept, ts)
                made.append(row)
            return made, head

        def write(db: Db, after: tuple[int, str]) -> tuple[int, str]:
            made, head = rows(after)
            db.executemany(self.insert_audit, made)
            return head

        with self._lock:
            if self._can_defer():
                made, head = rows(self._head)
                if defer:
                    self._defer_rows(made, head)
                    return made[0][0]
                self._commit_rows(made, head)
            else:
                head = self._appending(write)
            self._move_head(head)
            return head[0] - len(inner)

    # -- group commit: records written with the next transaction ------------------------------

    def _can_defer(self) -> bool:
        """A record may wait for the next transaction, or be committed with what waits in one
        statement (`_insert_at_once`): one writer keeps the chain's head (in a shared chain
        it is read in each append's transaction), and the calling task writes under no lease
        (whose fence a transaction checks)."""
        return not self._shared and not self._fenced()

    def _defer_rows(self, rows: list[tuple[Any, ...]], head: tuple[int, str]) -> None:
        """Group commit: `rows` (chained after the head in memory, which moves on now, so
        what is appended next follows them) are inserted at the start of the next transaction,
        whoever opens it (`Connected.defer`); the anchor's head moves after that commit. The
        caller shows nobody anything on their strength until it has seen them committed
        (`committed_total`)."""
        self._defer_checked(AuditRows(self, rows, head))  # (under the lock: `_can_defer`)
        self._head = head

    def _commit_rows(self, rows: list[tuple[Any, ...]], head: tuple[int, str]) -> None:
        """Commit `rows`, chained after the head this writer keeps (`head`: after them), with
        whatever waits: in one statement if it can, else in a transaction. The caller
        checked `_can_defer` and moves the head after."""
        if not self._insert_at_once(rows):
            def write(db: Db, after: tuple[int, str]) -> tuple[int, str]:
                db.executemany(self.insert_audit, rows)
                return head

            self._appending(write)

    def commit_deferred(self) -> None:
        """What waits, committed now: audit records alone in one statement (no transaction
        around it), anything else in a transaction."""
        with self._lock:
            if not self.deferred:
                return
            if self._can_defer() and self._insert_at_once([]):
                self._move_head(self._head)  # (past every record that waited)
                return
            super().commit_deferred()

    def _committed(self) -> None:
        self._writing_head = None
        due, self._anchor_due = self._anchor_due, None
        if due is not None:
            self._durable_head = due
        if due is not None and self._key is not None and self._lock_fd is not None:
            anchor.write_head(self._lock_fd, *due, self._key.mac(*due))

    def _rolled_back(self) -> None:
        self._anchor_due = self._writing_head = None  # its rows wait for the next transaction
        super()._rolled_back()

    def _move_head(self, head: tuple[int, str]) -> None:
        """After a commit: the new head, kept with its MAC (signed later: `sign_anchor`)."""
        self._head = self._known = self._durable_head = head
        if self._key is not None and self._lock_fd is not None:
            anchor.write_head(self._lock_fd, *head, self._key.mac(*head))

    def _chain_row(self, record: AuditRecord, head: tuple[int, str], payload: bytes | None,
                   ts: float | None = None) -> tuple[tuple[Any, ...], tuple[int, str]]:
        """The audit row that follows `head` in the chain, and the new head; written at `ts`
        (default: now)."""
        detail = dump_json(record.detail)  # (JSON writes a NUL as \u0000)
        if self._refuses_nul:
            check_no_nul(record)
        seq, prev = head[0] + 1, head[1]
        if ts is None:
            ts = self._now()
        if type(ts) is not float or not isfinite(ts):  # (a clock's int, or worse)
            ts = record_time(ts)
        try:
            digest = record_hash(seq, ts, record, detail, prev, check_columns)
        except UnicodeEncodeError:  # (no store takes it: refused before it can wait)
            raise InvalidArgument("the store cannot hold this value: text that is not Unicode"
                                  " (a lone surrogate) in an audit record") from None
        row = (seq, ts, record.pid, record.inv, record.tool, record.phase, record.syscall,
               record.resource, record.args_hash, record.cap_id, detail, prev, digest, payload)
        if self._signs:  # (`insert_audit`: one column more, the signature of one that vouches)
            row += (sign_record(self._key, record, seq, digest),)
        return row, (seq, digest)

    def check_storable(self, record: AuditRecord) -> None:
        """`InvalidArgument` for a record this backend cannot hold (text with a NUL), before
        it is held for later (`broker.kernel.held_call`). Every column is checked as a record
        is chained (`_chain_row`: `check_columns`); a held record's integers are the kernel's
        own (its process's pid, its call's seq), not checked again here, on every call."""
        if self._refuses_nul:
            check_no_nul(record)

    @contextmanager
    def audited(self) -> Iterator[tuple[Db, Callable[[AuditRecord], int]]]:
        """One transaction that changes rows and appends audit records: all of it is
        durable, or none of it. Yields the connection and an `append(record)`."""
        self._require_writer()
        with self._lock:
            heads: list[tuple[int, str]] = []

            def append(record: AuditRecord) -> int:
                row, head = self._chain_row(record, heads[-1], None)
                db.execute(self.insert_audit, row)
                heads.append(head)
                return head[0]

            with self.transaction() as db:
                heads.append(self._head_in(db))
                yield db, append
                if len(heads) > 1:
                    self._writing_head = heads[-1]
            if len(heads) > 1:
                self._move_head(heads[-1])
