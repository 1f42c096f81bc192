"""Reading the audit chain back: records, their payloads (vouched for by the records), and
raw rows, a page at a time."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

from broker.store import marked, vouch
from broker.store.anchor_notices import AnchorNotices
from broker.store.audit import AuditRecord, StoredRecord
from broker.store.audit_rows import AUDIT_COLUMNS, stored_record
from broker.store.connection import Connected, Row, where
from broker.store.links import ChainLinks
from broker.store.peer_anchors import PeerAnchors
from broker.store.recordsig import PARSED, RecordSignatures, marked_chain, trusted_keys

# Records are read in pages, so a long chain (or its payloads, up to 1 MiB each) is never
# held in memory at once.
_PAGE = 1024
_PAYLOAD_PAGE = 64
# The store as its server names it (`AuditReads.notice_store`): the cluster (its system
# identifier, kept by a replica promoted; '' where the brokers' role may not read it, as for
# every broker of that role) and the database (its oid: new for a copy, `CREATE DATABASE ...
# TEMPLATE` or a dump restored). Not its audit table's oid: a writer without the key makes
# the table again (every row kept, the chain intact) between two peers' opens, and their
# names differ for good, each one's notices noise to the other (red team 37).
_MAY_READ_CLUSTER = ("SELECT pg_catalog.has_function_privilege("
                     "'pg_catalog.pg_control_system()', 'EXECUTE')")
_CLUSTER = "SELECT system_identifier::pg_catalog.text FROM pg_catalog.pg_control_system()"
# Every name qualified, the operator and the casts too: a writer's own `=` over names (or
# its own type `text`, with casts to it giving one value: red team 38), first in a later
# session's search path, matched every database there (red team 37).
_STORE = ("SELECT oid::pg_catalog.text FROM pg_catalog.pg_database"
          " WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()")


class AuditReads(Connected):
    _links: ChainLinks | None = None
    _shared = False  # (`AuditChain`'s: brokers share the chain, and sign what vouches)
    _shareable = False  # (a backend brokers can share: PostgreSQL's; never an SQLite file)
    _server: str | None = None  # (`notice_store`: read once)

    def chain_links(self) -> ChainLinks:
        """This store's walk of the chain's links (`broker.store.links`): one for every
        loader over it (a kernel's), made on first use."""
        with self._lock:
            if self._links is None:
                signatures = RecordSignatures(trusted_keys(self.signer), *marked.recalled(
                    self)) if self._shared else None
                notices = AnchorNotices(self, getattr(self, "broker", None) or "")
                anchors = None if signatures is None else PeerAnchors(
                    self.published_anchors, signatures.trusts,  # type: ignore[attr-defined]
                    self.hash_at, notices)  # type: ignore[attr-defined]
                if anchors is not None:
                    notices.worth = anchors.worth
                self._links = ChainLinks(self._linked_records, self._own_head, signatures,
                                         anchors)
                if anchors is not None:
                    anchors.store = self.notice_store
            return self._links

    def notice_store(self) -> str:
        """The store a notice of an anchor is bound to (`anchor_notices.Told`), as its server
        names it (`_STORE`), read once (and again at a session made again, `_name_again`):
        not its chain's first record, which a copy of the store starts with too (its brokers'
        genuine notices, told here, read as a cut) and which a writer without the key can
        take away while one peer opens, its notices then bound to another first record than
        its peers walked (red team 36); nothing a writer can make again without the database
        (the audit table's oid: red team 37)."""
        if self._server is None:
            self._server = self._named(self._query)
        return self._server

    def _name_again(self) -> None:
        """At a session made again, before any notice is heard on it: the store named again
        if it was named (the database under its name may be another now, made again with
        every row, and the brokers opened after name it so: red team 37)."""
        if self._server is not None:
            self._server = self._named(lambda sql: self._db.execute(sql).fetchall())

    @staticmethod
    def _named(query: Callable[[str], list[Any]]) -> str:
        """The store as its server names it now (`notice_store`), read with `query`."""
        readable = query(_MAY_READ_CLUSTER)[0][0]
        cluster = query(_CLUSTER)[0][0] if readable else ""
        return f"{cluster} {query(_STORE)[0][0]}"

    def shared_links(self) -> ChainLinks | None:
        """A walk of its own of the chain as brokers sharing it read it (an end or a birth
        past its `MARKER` counts only signed by a trusted key: `ChainLinks.held`), for a
        reader (`libos ps`); None for a chain no broker shared (no marker: none held), or no
        broker can share (SQLite: a marker there is a writer's, and its broker holds none)."""
        if not self._shareable or not marked_chain(self):
            return None
        return ChainLinks(partial(self._linked_records, shared=True), signatures=RecordSignatures(
            trusted_keys(self.signer), *marked.recalled(self)))

    def anchor_memory(self) -> Path | None:
        """Where this user's key remembers the newest anchor a single writer signed for this
        store (`broker.store.remembered`), for a verifier: none known here."""
        return None

    def _own_head(self) -> tuple[int, str] | None:
        """The newest record this store, a single writer, appended or found, and its hash
        (None: not one, or one of many sharing the chain, whose head is anyone's)."""
        head = getattr(self, "_head", None)
        if head is None or getattr(self, "_shared", False) or getattr(
                self, "_lock_fd", None) is None:
            return None
        return int(head[0]), str(head[1])

    def _linked_records(self, after: int, shared: bool | None = None
                        ) -> Iterator[StoredRecord]:
        """The records after `after` as the links' walk needs them: every open walks the
        whole chain, so each is read by position and only the detail of one that vouches or
        ends a process parsed (the hash is of its text); in shared mode (`shared`, or this
        store's) with its signature (a write's outcome's too: `recordsig.SIGNED_OUTCOMES`)."""
        shared = self._shared if shared is None else shared
        columns = f"{AUDIT_COLUMNS}, sig" if shared else AUDIT_COLUMNS
        for r in self._audit_rows(columns, _PAGE, pid=None, after=after, limit=None):
            seq, ts, pid, inv, tool, phase, syscall, resource, ahash, cap_id, text, prev, \
                digest = tuple(r)[:13] if shared else r
            if syscall in PARSED:
                yield stored_record(r, r[13] if shared else None)
            else:
                yield StoredRecord(seq, ts, AuditRecord(phase, syscall, pid, inv, tool, resource,
                                                        ahash, cap_id), text, prev, digest,
                                   r[13] if shared else None)  # (a write's outcome's)

    def record_times(self, after: int, limit: int) -> list[tuple[int, float]]:
        """The seq and time of the records after seq `after`, at most `limit` of them (a time
        that is no number, a writer's, as the latest: `math.inf`)."""
        rows = self._query("SELECT seq, ts FROM audit WHERE seq > ? ORDER BY seq LIMIT ?",
                           (after, limit))
        return [(int(row["seq"]), _time(row["ts"])) for row in rows]

    def audit_records(self, *, pid: int | None = None, after: int = 0,
                      limit: int | None = None) -> Iterator[StoredRecord]:
        for r in self._audit_rows(AUDIT_COLUMNS, _PAGE, pid=pid, after=after, limit=limit):
            yield stored_record(r)

    def audit_records_with_payloads(self, *, after: int = 0
                                    ) -> Iterator[tuple[StoredRecord, bytes | None]]:
        for r in self._audit_rows(f"{AUDIT_COLUMNS}, payload, sig", _PAYLOAD_PAGE, pid=None,
                                  after=after, limit=None):  # (a verifier's: with signatures)
            yield stored_record(r, r["sig"]), None if r["payload"] is None else bytes(
                r["payload"])

    def vouched_payload(self, stored: StoredRecord, part: str | None = None) -> bytes | None:
        """The payload kept beside a record (`part` of it: `vouch.check_payload`), if the
        record is intact and vouches for it; `Tampered` (naming the record) otherwise."""
        return vouch.check_payload(stored, self.payload(stored.seq), part)

    def _audit_rows(self, columns: str, page: int, *, pid: int | None, after: int,
                    limit: int | None) -> Iterator[Row]:
        while limit is None or limit > 0:
            size = page if limit is None else min(page, limit)
            only, values = where({"pid": pid})
            rows = self._query(f"SELECT {columns} FROM audit WHERE seq>?{only} ORDER BY seq"
                               " LIMIT ?", (after, *values, size))
            yield from rows
            if len(rows) < size:
                return
            after = rows[-1]["seq"]
            if limit is not None:
                limit -= len(rows)

    # -- payloads for replay: a tool call's full arguments, a syscall's full result -----------

    def payload(self, seq: int) -> bytes | None:
        rows = self._query("SELECT payload FROM audit WHERE seq=?", (seq,))
        return bytes(rows[0]["payload"]) if rows and rows[0]["payload"] is not None else None

    def audit_rows_after(self, seq: int, pid: int | None = None) -> Iterator[Row]:
        """Audit rows after `seq` (of process `pid` only, if given), read a page at a time:
        a reader that keeps only what it needs holds no more than a page."""
        yield from self._audit_rows("seq, pid, inv, tool, phase, syscall, resource, args_hash,"
                                    " detail", _PAGE, pid=pid, after=seq, limit=None)


def _time(ts: Any) -> float:
    return float(ts) if type(ts) in (int, float) and not math.isnan(ts) else math.inf
