"""Approval requests, the answers people write into them (from this OS process or another),
applying an answer exactly once, and refused answers waiting to be audited.

Closing requests and applying answers change the process and capability rows and append
audit records in the same transaction, so this mixin stands on the audit chain and the
process tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from broker.caps.capability import Capability
from broker.errors import Conflict, NotFound
from broker.store import answer_sig
from broker.store.audit import AuditRecord
from broker.store.capvouch import vouch_for
from broker.store.chain import AuditChain
from broker.store.connection import Db, dump_json, where
from broker.store.ends import ENDED, end_record
from broker.store.processes import ProcessTables

if TYPE_CHECKING:
    from broker.store.keys import AuditKey

# Every column but PostgreSQL's explicit `rowid` (SQLite's is implicit): what a request is.
_COLUMNS = ("id, kind, pid, inv, tool, syscall, resource, cap_kind, cap_right, cap_id, cap_scope,"
            " args, args_hash, reason, question, created, deadline, state, answer, scope, value,"
            " who, answered, applied, grant_id, labels, sig")
# A request with its process's image (name and version now) beside it.
_WITH_IMAGE = ("SELECT " + ", ".join(f"a.{c.strip()}" for c in _COLUMNS.split(",")) +
               ", p.image AS proc_image, p.version AS proc_version"
               " FROM approvals a LEFT JOIN processes p ON p.pid = a.pid")
# The states of a request not applied yet: waiting, or answered and waiting to be applied.
_UNAPPLIED = ("pending", "approved", "denied")
PIDS_AT_ONCE = 500  # processes' requests looked up by one statement (`settle_approvals`)
IDS_AT_ONCE = 1000  # requests one look-up names (`settled_approvals`: PostgreSQL takes 65,535)
_OPEN_OF = ("SELECT 1 FROM approvals WHERE pid=? AND state IN (?,?,?) AND applied IS NULL"
            " LIMIT 1")


class ApprovalTables(AuditChain, ProcessTables):
    # -- approvals ---------------------------------------------------------------------------

    def insert_approval(self, row: dict[str, Any], record: AuditRecord | None = None) -> None:
        """File a request; with its `ask` `record`, both in one transaction: a request a
        person may see is never without its record, nor a record of one never filed."""
        self._require_writer()
        insert = (f"INSERT INTO approvals({', '.join(row)}) VALUES ({','.join('?' * len(row))})",
                  tuple(row.values()))
        if record is None:
            with self.transaction() as db:
                db.execute(*insert)
            return

        def write(db: Db, after: tuple[int, str]) -> tuple[int, str]:
            db.execute(*insert)
            chained, head = self._chain_row(record, after, None)
            db.execute(self.insert_audit, chained)
            return head

        with self._lock:
            self._move_head(self._appending(write))

    def get_approval(self, approval_id: str) -> dict[str, Any]:
        rows = self._query(f"{_WITH_IMAGE} WHERE a.id=?", (approval_id,))
        if not rows:
            raise NotFound("no such approval request")
        return dict(rows[0])

    def approval_ids_starting(self, prefix: str, limit: int) -> list[str]:
        """Ids of requests in any state that begin with `prefix` (at most `limit`)."""
        # (the length cast in the statement: PostgreSQL's binding types a small int as a
        # smallint, and a writer's `substr` taking one was the exact match: red team 44)
        rows = self._query("SELECT id FROM approvals WHERE substr(id, 1, CAST(? AS INTEGER)) = ? "
                           "ORDER BY created, rowid LIMIT ?", (len(prefix), prefix, limit))
        return [r["id"] for r in rows]

    def list_approvals(self, state: str | None = "pending") -> list[dict[str, Any]]:
        only, values = where({"a.state": state})
        rows = self._query(f"{_WITH_IMAGE} WHERE TRUE{only} ORDER BY a.created, a.rowid",
                           values)
        return [dict(r) for r in rows]

    def answer_approval(self, approval_id: str, *, state: str, answer: str, who: str,
                        now: float, scope: str | None = None, value: str | None = None,
                        signer: AuditKey | None = None, shown: str | None = None
                        ) -> str | None:
        """Write a person's answer into a pending request. Allowed on a read-only store too:
        a front end in another OS process answers this way, signed by `signer` (the user's
        audit key: `answer_sig`; a broker applies no answer through the store without it;
        a broker's own answer is signed by its key, for a peer whose call waits on it), and
        the broker that owns the store audits and applies the answer. `shown`: the digest
        of the request as the person was shown it (`answer_sig.shown_digest`); a row that
        no longer gives it is `Conflict`, nothing written (a writer's edit since the showing
        is never signed). Returns the signature written (None: no key). Unknown ids are
        `NotFound`; answered, expired or cancelled requests are `Conflict`."""
        answered = {"state": state, "answer": answer, "who": who, "scope": scope,
                    "value": value, "answered": now}
        with self.transaction() as db:
            sig, signer = None, signer if signer is not None else self._key
            found = db.execute(f"SELECT {_COLUMNS} FROM approvals WHERE id=?",
                               (approval_id,)).fetchone()
            if (found is not None and shown is not None
                    and answer_sig.shown_digest(dict(found)) != shown):
                raise Conflict(f"approval request {approval_id} changed since it was shown;"
                               " look again")
            if signer is not None and found is not None:
                sig = answer_sig.sign(signer, self.identity, {**dict(found), **answered})
            cur = db.execute(
                "UPDATE approvals SET state=?, answer=?, who=?, scope=?, value=?, answered=?,"
                " sig=? WHERE id=? AND state='pending' AND deadline>?",
                (state, answer, who, scope, value, now, sig, approval_id, now))
            if cur.rowcount == 1:
                self._notify(db, "approval")
                return sig
            row = db.execute("SELECT state FROM approvals WHERE id=?", (approval_id,)).fetchone()
        if row is None:
            raise NotFound("no such approval request")
        if row[0] == "pending":
            raise Conflict(f"approval request {approval_id} has expired")
        raise Conflict(f"approval request {approval_id} is already {row[0]}")

    def refuse_answer(self, row: dict[str, Any], record: AuditRecord, *,
                      closed: str | None = None) -> bool:
        """An answer the broker does not take (`row` as it read it): the request is pending
        again, for a person to answer (`closed`: `cancelled` or `expired` again, closed now,
        as the chain records it), and `record` says why, in one transaction. False (and
        nothing written) if the row changed since it was read."""
        when = self._now() if closed is not None else None
        with self.audited() as (db, append):
            cur = db.execute(
                "UPDATE approvals SET state=?, answer=NULL, who=NULL, scope=NULL,"
                " value=NULL, answered=?, sig=NULL, applied=?, grant_id=NULL WHERE id=?"
                " AND state=? AND COALESCE(sig, '')=?",
                (closed or "pending", when, when, row["id"], row["state"],
                 row.get("sig") or ""))
            if cur.rowcount != 1:
                return False
            append(record)
            self._notify(db, "approval")
        return True

    def pending_approvals_of(self, pid: int, syscall: str, args_hash: str
                             ) -> list[dict[str, Any]]:
        """The pending requests of one process for one call (by index, not a scan)."""
        rows = self._query(f"SELECT {_COLUMNS} FROM approvals WHERE pid=? AND state='pending'"
                           " AND syscall=? AND args_hash=? ORDER BY created, rowid",
                           (pid, syscall, args_hash))
        return [dict(r) for r in rows]

    def settle_approvals(self, state: str, now: float,
                         record: Callable[[dict[str, Any]], AuditRecord], *,
                         ids: list[str] | None = None, answered_too: bool = False,
                         ended: Sequence[tuple[int, dict[str, Any]]] | None = None,
                         first: AuditRecord | None = None) -> list[dict[str, Any]]:
        """Close requests without granting anything (expired, cancelled): those in `ids`, or
        every one of the processes in `ended`; pending ones, and with `answered_too` answered
        ones not yet applied. Each closed request gets its audit record (`record(row)`), and
        each process in `ended` its row updated with the fields given beside it, all in one
        transaction: a tree killed has every end recorded, or none; `first`, the act that
        ends them (the host's kill), is recorded first in it. Returns the closed rows."""
        self._require_writer()
        if (ids is not None and not ids) or (ended is not None and not ended):
            return []
        states = _UNAPPLIED if answered_too else ("pending",)
        sql = (f"SELECT {_COLUMNS} FROM approvals WHERE state IN ({','.join('?' * len(states))}) "
               "AND applied IS NULL")
        params: tuple[Any, ...] = states
        if ids is not None:
            sql, params = sql + f" AND id IN ({','.join('?' * len(ids))})", (*params, *ids)
        with self.audited() as (db, append):
            if first is not None:
                append(first)
            for pid, fields in ended or ():
                self._update_process(db, pid, dict(fields))
                append(end_record(pid, fields))  # (on the chain: `broker.store.ends`)
            rows: list[dict[str, Any]] = []
            for pids in _pids_at_once(ended):
                of_pids = f" AND pid IN ({','.join('?' * len(pids))})" if pids else ""
                rows += [dict(r) for r in db.execute(
                    f"{sql}{of_pids} ORDER BY created, rowid", (*params, *pids)).fetchall()]
            settled = []
            for row in rows:  # (conditional too: never a request someone settled first, nor
                # one answered since it was read unless `answered_too`: an answer takes no lock)
                cur = db.execute("UPDATE approvals SET state=?, answered=COALESCE(answered, ?),"
                                 f" applied=? WHERE id=? AND applied IS NULL AND state IN"
                                 f" ({','.join('?' * len(states))})",
                                 (state, now, now, row["id"], *states))
                if cur.rowcount != 1:
                    continue
                row.update(state=state, applied=now)
                append(record(row))
                settled.append(row)
            rows = settled
            if rows:  # a broker whose call waits on one of them is woken
                self._notify(db, "approval")
        return rows

    def update_process(self, pid: int, *, defer: bool = False, **fields: Any) -> None:
        """As `ProcessTables.update_process`; a row that ends now (one refused at a load, a
        spawn that never finished) gets its chained record in the same transaction
        (`ends.end_record`). A deferred one (a spawn undone: its grants were not stored, so
        the chain vouches for none) gets none: its record, which nothing could set aside,
        would wait in front of every commit while the store that failed the spawn fails."""
        if defer or fields.get("state") not in ENDED:
            super().update_process(pid, defer=defer, **fields)
            return
        with self.audited() as (db, append):
            self._update_process(db, pid, dict(fields))
            append(end_record(pid, fields))

    def end_later(self, pid: int, process: dict[str, Any],
                  events: list[tuple[int | None, str, dict[str, Any]]],
                  landed: Callable[[bool | None, list[int | None]], None]) -> _EndLater:
        """Group commit (`defer`): the end of process `pid` (`process`: its row's new fields)
        and `events` (in order, the last the end's own), written by the next transaction;
        unless it has a request that `settle_approvals` with `answered_too` would close then:
        only the events before the last are written, and the caller ends it that way (its
        requests closed in the same transaction). `landed(ended, seqs)` right after that
        commit, on whichever thread made it, under the store's lock: it must not block or
        raise. `seqs`: each event's, None for one not stored; `ended`: None if the store
        refused the end for good (set aside, `pid` told: `refusals_of`), its events before
        it stored all the same. The end can be withdrawn until then (`_EndLater.withdraw`).
        Its chained record (`broker.store.ends.end_record`) waits for the same commit, just
        before it (a withdrawn end's is taken back by its caller: `ends.end_taken_back`)."""
        end = _EndLater(self, pid, process, events, landed)
        with self._lock:  # (no commit between the record and the row: one transaction)
            end.record = self.append_audit(end_record(pid, process), defer=True)
            self.defer(end)
        return end

    def settled_approvals(self, ids: list[str]) -> list[str]:
        """Those of `ids` no longer pending (answered, expired or cancelled, by anyone), or
        gone (a row a database writer deleted or renamed: its waiter wakes to find it so)."""
        pending: set[str] = set()
        for at in range(0, len(ids), IDS_AT_ONCE):  # (a statement's parameters are bounded)
            chunk = ids[at:at + IDS_AT_ONCE]
            rows = self._query(f"SELECT id, state FROM approvals WHERE id IN "
                               f"({','.join('?' * len(chunk))})", chunk)
            pending.update(r["id"] for r in rows if r["state"] == "pending")
        return [i for i in ids if i not in pending]

    def unapplied_answers(self) -> list[dict[str, Any]]:
        """Answers written (by another OS process) and not applied yet: a partial index holds
        only these, so the broker's watcher looks at nothing else."""
        hint = self._index_hint("approvals_unapplied")
        rows = self._query(f"SELECT {_COLUMNS} FROM approvals {hint} WHERE applied IS NULL AND"
                           " state IN ('approved', 'denied') ORDER BY answered, rowid")
        return [dict(r) for r in rows]

    def expired_approvals(self, now: float) -> list[str]:
        rows = self._query("SELECT id FROM approvals WHERE state='pending' AND deadline<=?",
                           (now,))
        return [r["id"] for r in rows]

    def orphaned_approvals(self) -> list[str]:
        """Pending or unapplied requests of processes that have ended (a crash cut off their
        cancellation): they must never be granted."""
        rows = self._query("SELECT a.id FROM approvals a JOIN processes p ON p.pid=a.pid "
                           "WHERE a.applied IS NULL AND a.state IN ('pending', 'approved', "
                           "'denied') AND p.state IN ('exited', 'killed')")
        return [r["id"] for r in rows]

    def apply_approval(self, approval_id: str, entries: list[tuple[str, Capability]],
                       grant_id: str | None, carved: Sequence[Capability],
                       record: AuditRecord, answer: dict[str, Any] | None = None) -> None:
        """Mark an answer applied (the one read as `answer`, if given: its state, answer and
        signature unchanged since), insert the capabilities it grants, store the uses left
        to the capability they were carved from, and append its audit `record`, in one
        transaction: an answer takes effect, and is recorded, exactly once (a store that
        fails leaves neither, for the answer to be applied again)."""
        self._require_writer()
        now = self._now()
        vouch_for(record.detail, entries, carved)  # for each row it grants, and uses handed

        def write(db: Db, after: tuple[int, str]) -> tuple[int, str]:
            same, fields = "", ()
            if answer is not None:
                same = " AND state=? AND COALESCE(answer, '')=? AND COALESCE(sig, '')=?"
                fields = (answer["state"], answer["answer"] or "", answer.get("sig") or "")
            cur = db.execute("UPDATE approvals SET applied=?, grant_id=? WHERE id=? "
                             "AND applied IS NULL AND state IN ('approved', 'denied')" + same,
                             (now, grant_id, approval_id, *fields))
            if cur.rowcount != 1:
                raise Conflict(f"approval request {approval_id} was already applied")
            self._insert_capabilities(db, entries, carved, now)
            row, head = self._chain_row(record, after, None)
            db.execute(self.insert_audit, row)
            return head

        with self._lock:
            self._move_head(self._appending(write))

    def log_approval_reject(self, detail: dict[str, Any]) -> None:
        """A refused answer from a front end that may not write the audit (read-only store):
        kept here until the broker moves it into the audit chain."""
        with self.transaction() as db:
            db.execute("INSERT INTO approval_rejects(ts, detail) VALUES (?,?)",
                       (self._now(), dump_json(detail)))

    def take_approval_rejects(self, record: Callable[[dict[str, Any]], object]) -> None:
        """Move the refusals logged by front ends into the audit: each is `record`ed, then
        dropped, in order; one whose record fails stays for the next try (never lost; a drop
        that fails after its record was written records it twice)."""
        self._require_writer()
        rows = self._query("SELECT seq, detail FROM approval_rejects ORDER BY seq")
        for row in rows:  # the usual case: none, a read per watcher tick
            record(json.loads(row["detail"]))
            with self.transaction() as db:
                db.execute("DELETE FROM approval_rejects WHERE seq=?", (row["seq"],))


def _pids_at_once(ended: Sequence[tuple[int, Any]] | None) -> list[tuple[int, ...]]:
    """The pids of `ended` a few at a time (a statement's parameters are bounded, 65,535 on
    PostgreSQL, and a tree is as large as `ProcessLimits.descendants` lets it be); `[()]`:
    no process named, no filter by process."""
    if ended is None:
        return [()]
    pids = tuple(pid for pid, _ in ended)
    return [pids[at:at + PIDS_AT_ONCE] for at in range(0, len(pids), PIDS_AT_ONCE)]


class _EndLater:
    """The deferred write of `end_later` (again after a rollback). Its `items` are the places
    of its events (the last the end's own, written with the process's row): all of them,
    unless the store refuses the write for good; then they are written one at a time, and one
    refused is set aside (`Connected._items_alone`), its own process told: an event another
    process batched fails neither this end nor the events beside it."""

    __slots__ = ("committed", "ended", "events", "items", "landed", "pid", "process", "record",
                 "seqs", "store", "withdrawn")

    def __init__(self, store: ApprovalTables, pid: int, process: dict[str, Any],
                 events: list[tuple[int | None, str, dict[str, Any]]],
                 landed: Callable[[bool | None, list[int | None]], None]) -> None:
        self.store, self.pid, self.process, self.events = store, pid, process, events
        self.landed = landed
        self.committed = self.withdrawn = False
        self.ended: bool | None = False
        self.record = 0  # its end's record's seq (`end_later`)
        self.items = list(range(len(events)))
        self.seqs: list[int | None] = [None] * len(events)  # each event's, once it is stored

    def __call__(self, db: Db) -> None:
        events, writing, end = self.events, self.items, len(self.events) - 1
        if writing and writing[-1] == end:  # (in order: the end's own is last)
            self.ended = (not self.withdrawn
                          and db.execute(_OPEN_OF, (self.pid, *_UNAPPLIED)).fetchone() is None)
            self.seqs[end] = None
            if self.ended:
                self.store._update_process(db, self.pid, dict(self.process))
            else:
                writing = writing[:-1]
        seqs = self.store._insert_events(db, [events[at] for at in writing])
        for at, seq in zip(writing, seqs, strict=True):
            self.seqs[at] = seq

    @property
    def pids(self) -> list[int | None]:
        """Whose its `items` are (told if the store refuses them): the end's is its process's,
        each event before it that of the process it names."""
        end = len(self.events) - 1
        return [self.pid if at == end else self.events[at][0] for at in self.items]

    def set_aside(self, item: int) -> None:
        """`item` was refused for good: nothing of it is stored (of the end's: no end)."""
        self.seqs[item] = None
        if item == len(self.events) - 1:
            self.ended = None

    def after_commit(self) -> None:
        self.committed = True
        self.landed(self.ended, self.seqs)

    def withdraw(self) -> bool:
        """The end is not to be written after all (its process's task gave up waiting for a
        store that fails: `StoreGaveUp`): the transaction that carries this write stores only
        the events before the end's own (batched lines, in order), as for a process with an
        open request. False if it has committed already (the end is durable)."""
        with self.store._lock:  # (no commit runs meanwhile, on any thread)
            if not self.committed:
                self.withdrawn = True
            return not self.committed
