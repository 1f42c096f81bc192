"""Images, the process table, capabilities and the event log (a process's log lines and
lifecycle events, outside the audit chain)."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

from broker.caps.capability import Capability
from broker.caps.labels import LabelPolicy
from broker.errors import Conflict, LibosError, NotFound
from broker.store.audit_rows import AUDIT_COLUMNS, stored_record
from broker.store.capvouch import VOUCHING, CapDigests, narrows
from broker.store.connection import Connected, Db, Row, dump_json, dump_storable_json, where
from broker.store.json_column import Unreadable, read_json, read_json_or_none
from broker.store.labels import load_labels
from broker.store.refusals import RefusedBeside, refused_for_good
from broker.store.vouch import HOST_IMAGE, IMAGE_MADE, ImageDigests, Tampered

_LIVE_CAPS = """
WITH RECURSIVE kept(id) AS (
    SELECT c.id FROM capabilities c JOIN processes p ON p.pid = c.owner
    WHERE p.state NOT IN ('exited', 'killed')
    UNION
    SELECT c.parent FROM capabilities c JOIN kept ON c.id = kept.id WHERE c.parent IS NOT NULL)
SELECT * FROM capabilities WHERE id IN (SELECT id FROM kept) ORDER BY created, rowid"""
# The names written out, not bound: so the query is seen to match the partial index on
# them (migration 0009, `audit_vouching`; a test holds the two the same).
VOUCHING_NAMES = " OR ".join(f"syscall = '{name}'" for name in VOUCHING)
_VOUCHING_RECORDS = (f"SELECT {AUDIT_COLUMNS} FROM audit WHERE ({VOUCHING_NAMES})"
                     " AND detail LIKE ? ORDER BY seq")
_IMAGE_NAMES = ", ".join(f"'{name}'" for name in (HOST_IMAGE, *IMAGE_MADE))
_IMAGE_RECORDS = (f"SELECT {AUDIT_COLUMNS} FROM audit WHERE seq > ? AND syscall IN"
                  f" ({_IMAGE_NAMES}) ORDER BY seq")
log = logging.getLogger(__name__)
_EVENT = "INSERT INTO events(ts, pid, kind, data) VALUES (?,?,?,?)"
_MAX_SEQ = 1 << 63


class ProcessTables(Connected):
    # -- images ------------------------------------------------------------------------------

    def put_image(self, name: str, version: str, spec: dict[str, Any]) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT spec FROM images WHERE name=? AND version=?",
                             (name, version)).fetchone()
            if row is not None:
                if read_json(row[0], f"image {name}:{version}'s spec") != spec:
                    raise Conflict(f"image {name}:{version} is already registered differently")
                return
            db.execute("INSERT INTO images(name, version, spec, created) VALUES (?,?,?,?)",
                       (name, version, dump_json(spec), self._now()))

    def add_image_version(self, name: str, spec: dict[str, Any]) -> str:
        """Register `spec` under `name` as a new version (1, 2, ...), unless the name's latest
        version already has exactly this content (its version is returned). One transaction:
        two registrations never take the same number."""
        content = {k: v for k, v in spec.items() if k != "version"}
        with self.transaction() as db:
            rows = db.execute("SELECT version, spec FROM images WHERE name=? ORDER BY created"
                              " DESC, rowid DESC", (name,)).fetchall()
            if rows:
                latest = read_json(rows[0][1], f"image {name}:{rows[0][0]}'s spec")
                if {k: v for k, v in latest.items() if k != "version"} == content:
                    return str(rows[0][0])
            version = str(1 + max((int(r[0]) for r in rows  # (ASCII digits: `int` takes them)
                                   if str(r[0]).isascii() and str(r[0]).isdigit()), default=0))
            db.execute("INSERT INTO images(name, version, spec, created) VALUES (?,?,?,?)",
                       (name, version, dump_json({**spec, "version": version}), self._now()))
        return version

    def list_images(self) -> list[dict[str, Any]]:
        """Every version of every image, by name, oldest version first."""
        return [{"name": r["name"], "version": r["version"], "created": r["created"],
                 "spec": _listed_spec(r)}
                for r in self._query("SELECT name, version, spec, created FROM images ORDER BY"
                                     " name, created, rowid")]

    def get_image(self, name: str, version: str | None = None) -> tuple[str, dict[str, Any]]:
        if version is None:
            rows = self._query("SELECT version, spec FROM images WHERE name=? "
                               "ORDER BY created DESC, rowid DESC LIMIT 1", (name,))
        else:
            rows = self._query("SELECT version, spec FROM images WHERE name=? AND version=?",
                               (name, version))
        if not rows:
            raise NotFound(f"no image {name}" + (f":{version}" if version else ""))
        return rows[0]["version"], read_json(
            rows[0]["spec"], f"image {name}:{rows[0]['version']}'s spec")

    def image_vouches(self, into: ImageDigests | None = None) -> ImageDigests:
        """What the chain vouches for of the stored images: the records that register them
        (the syscall filter done by the database); `into`, fed on with those after the last
        it saw (a range of the primary key: not the whole chain again)."""
        found = ImageDigests() if into is None else into
        head = self.last_seq()  # (the chain is stored as a prefix: all up to it are there)
        for r in self._query(_IMAGE_RECORDS, (found.seen,)):
            found.see(stored_record(r))
        found.seen = max(found.seen, head)
        return found

    # -- processes ---------------------------------------------------------------------------

    def insert_process(self, *, parent: int | None, image: str, version: str, state: str,
                       root: str, cwd: str) -> int:
        now = self._now()
        with self.transaction() as db:
            pid = int(db.execute(
                "INSERT INTO processes(parent, image, version, state, root, cwd, usage, created,"
                " updated) VALUES (?,?,?,?,?,?,?,?,?) RETURNING pid",
                (parent, image, version, state, root, cwd, "{}", now, now)).fetchone()[0])
            self._process_inserted(pid)
            return pid

    def update_process(self, pid: int, *, defer: bool = False, **fields: Any) -> None:
        """`defer`: with the next transaction (`Connected.defer`)."""
        if defer:
            self.defer(_DeferredUpdate(self, pid, fields))
            return
        with self.transaction() as db:
            self._update_process(db, pid, fields)

    # -- pause holds -----------------------------------------------------------------------------

    def set_holds(self, pid: int, holders: set[str]) -> None:
        self.change_holds([(pid, holders, None)])

    def change_holds(self, changes: Sequence[tuple[int, set[str], dict[str, Any] | None]]
                     ) -> None:
        """Processes' holds, each with its row's fields when the holds move it (None: no
        move), in one transaction: a tree paused or resumed whole, or not at all."""
        with self.transaction() as db:
            for pid, holders, fields in changes:
                db.execute("DELETE FROM holds WHERE pid=?", (pid,))
                db.executemany("INSERT INTO holds(pid, holder) VALUES (?,?)",
                               [(pid, h) for h in sorted(holders)])
                if fields is not None:
                    self._update_process(db, pid, dict(fields))

    def holds_of(self, pid: int) -> set[str]:
        return {r["holder"] for r in self._query("SELECT holder FROM holds WHERE pid=?", (pid,))}

    def _update_process(self, db: Db, pid: int, fields: dict[str, Any]) -> None:
        for key in ("usage", "result"):
            if key in fields:
                value = fields[key]
                fields[key] = "null" if value is None else dump_storable_json(value)
        fields["updated"] = self._now()
        db.execute(_update_sql(tuple(fields)), (*fields.values(), pid))

    def get_process(self, pid: int) -> dict[str, Any]:
        # (a pid no row can hold names none: not the driver's OverflowError for it)
        rows = self._query("SELECT * FROM processes WHERE pid=?", (pid,)) if (
            type(pid) is not int or -(1 << 63) <= pid < (1 << 63)) else []
        if not rows:
            raise NotFound(f"no process {pid}")
        return self._process_row(rows[0])

    def live_pids(self) -> list[int]:
        return [r["pid"] for r in self._query(
            "SELECT pid FROM processes WHERE state NOT IN ('exited', 'killed') ORDER BY pid")]

    def parent_of(self, pid: int) -> int | None:
        """`pid`'s parent, from its row alone (`NotFound` if there is none)."""
        rows = self._query("SELECT parent FROM processes WHERE pid=?", (pid,))
        if not rows:
            raise NotFound(f"no process {pid}")
        return rows[0]["parent"]

    def children_of(self, pid: int) -> list[int]:
        return [r["pid"] for r in self._query(
            "SELECT pid FROM processes WHERE parent=? ORDER BY pid", (pid,))]

    def list_processes(self) -> list[dict[str, Any]]:
        return [self._process_row(r) for r in self._query("SELECT * FROM processes ORDER BY pid")]

    @staticmethod
    def _process_row(row: Row) -> dict[str, Any]:
        out = dict(row)
        out["usage"] = read_json(out["usage"], f"process {out['pid']}'s usage")
        out["result"] = read_json_or_none(out["result"], f"process {out['pid']}'s result", None)
        out["labels"] = sorted(load_labels(out.get("labels")))
        return out

    # -- capabilities ------------------------------------------------------------------------

    def insert_capabilities(self, entries: list[tuple[str, Capability]],
                            updated: Sequence[Capability] = (), *,
                            process: tuple[int, dict[str, Any]] | None = None) -> None:
        """Insert new capabilities and, in the same transaction, the new use counts of the
        counted capabilities they were carved from, and `process`'s (pid, fields) row
        change (a spawned process made runnable with its grants)."""
        now = self._now()
        with self.transaction() as db:
            self._insert_capabilities(db, entries, updated, now)
            if process is not None:
                self._update_process(db, process[0], dict(process[1]))

    @staticmethod
    def _insert_capabilities(db: Db, entries: list[tuple[str, Capability]],
                             updated: Sequence[Capability], now: float) -> None:
        """Inside a transaction (this one's, or that of an answer being applied)."""
        db.executemany("UPDATE capabilities SET uses=? WHERE id=?",
                       [(c.uses, c.id) for c in updated])
        db.executemany(
            "INSERT INTO capabilities(id, owner, handle, kind, scope, rights, effect, uses,"
            " expires, parent, args_hash, created, policy) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(c.id, c.owner, h, c.kind, c.scope, ",".join(sorted(c.rights)), c.effect,
              c.uses, c.expires, c.parent, c.args_hash, now,
              None if c.policy.empty else dump_json(c.policy.to_wire())) for h, c in entries])

    def delete_capabilities(self, cap_ids: list[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM capabilities WHERE id=?", [(i,) for i in cap_ids])

    def load_capabilities(self, *, live: bool = False, owner: int | None = None,
                          refused: list[str] | None = None, vouches: CapDigests | None = None
                          ) -> list[tuple[str, Capability]]:
        """`stored_capabilities`, less the rows the audit chain does not vouch for (planted
        or edited: `broker.store.capvouch`): a process holds less, never more. Each one left
        out is logged, and its problem added to `refused` (for a record of it). `vouches`:
        `capability_vouches`, if the caller read it already."""
        damaged: dict[int, str] = {}  # an owner: its row that cannot be read back
        rows = self.stored_capabilities(live=live, owner=owner, damaged=damaged)
        for problem in damaged.values():  # (it may have been a rule that narrows: nothing)
            problem += "; the process holds nothing"
            log.warning("capabilities left out: %s", problem)
            if refused is not None:
                refused.append(problem)
        rows = [(h, c) for h, c in rows if c.owner not in damaged]
        if not rows:
            return rows
        vouches = vouches or self.capability_vouches()
        gone = vouches.missing(rows)  # (a process a row of which was deleted: nothing)
        kept = []
        for problem in gone.values():
            log.warning("capabilities left out: %s", problem)
            if refused is not None:
                refused.append(problem)
        narrowed: set[int] = set()  # a row that narrows, edited: leaving it out would widen
        for handle, cap in rows:
            if cap.owner in gone:
                continue
            problem = vouches.problem(handle, cap)
            if problem is None:
                kept.append((handle, cap))
                continue
            if narrows(cap) or cap.id in vouches.rows:  # (as it is, or as it was granted)
                narrowed.add(cap.owner)
                problem += "; a rule that narrows it: the process holds nothing"
            log.warning("capability left out: %s", problem)
            if refused is not None:
                refused.append(problem)
        return [(h, c) for h, c in kept if c.owner not in narrowed]

    def capability_vouches(self, unvouched: tuple[int, int] | None = None) -> CapDigests:
        """What the chain vouches for of the capability rows: the records that carry digests
        of them (one scan, the text filter done by the database). `unvouched`: the span
        (after, upto] no anchor vouches for, a reader's (`anchored_reads`); by default the
        one a writer found at its open (`AuditChain.unvouched_span`)."""
        if unvouched is None:
            unvouched = getattr(self, "unvouched_span", None)
        found = CapDigests(unvouched, links=self.chain_links())
        rows = self._query(_VOUCHING_RECORDS, ('%"cap_%',))  # (its keys: `capvouch.CAP_*`)
        found.links.walk()  # (after the read: every record read is walked)
        for r in rows:
            found.see(stored_record(r))
        found.settle()
        return found

    def stored_capabilities(self, *, live: bool = False, owner: int | None = None,
                            damaged: dict[int, str] | None = None
                            ) -> list[tuple[str, Capability]]:
        """Every capability row as stored, unchecked; with `live`, those of live processes
        and the ones they derive from (a revocation reaches down from them), not those of
        processes long ended; with `owner`, those of that process. `damaged`: a row that
        cannot be read back is left out and its owner named there (with the problem), not
        raised (`Tampered`)."""
        if owner is not None:
            rows = self._query("SELECT * FROM capabilities WHERE owner=? ORDER BY created, rowid",
                               (owner,))
        else:
            rows = self._query(_LIVE_CAPS if live else
                               "SELECT * FROM capabilities ORDER BY created, rowid")
        if damaged is None:
            return [(r["handle"], _capability(r)) for r in rows]
        out = []
        for r in rows:
            try:
                out.append((r["handle"], _capability(r)))
            except Tampered as exc:
                damaged.setdefault(r["owner"], str(exc))
        return out

    def readable_capabilities(self) -> tuple[list[tuple[str, Capability]], dict[str, str]]:
        """Every capability row as stored, unchecked, less those that cannot be read back
        (edited in the database): each of those named instead (by its id), so a verifier
        goes on past it to the rest."""
        kept, damaged = [], {}
        for r in self._query("SELECT * FROM capabilities ORDER BY created, rowid"):
            try:
                kept.append((r["handle"], _capability(r)))
            except Tampered as exc:
                damaged[r["id"]] = exc.message
        return kept, damaged

    # -- events ------------------------------------------------------------------------------

    def append_event(self, pid: int | None, kind: str, data: dict[str, Any]) -> int | None:
        return self.append_events([(pid, kind, data)])[0]

    def append_events(self, rows: list[tuple[int | None, str, dict[str, Any]]]
                      ) -> list[int | None]:
        """Store events in one transaction; returns their seqs, in order. One the store
        refuses for good (`broker.store.refusals`) is set aside, its process told
        (`refusals_of`), its seq None: the others are stored (a process's bad log line
        fails no other process's lines batched with it), and a batch of one such line
        never raises the driver's own error out of the event flush (no store fault: it
        would end the broker, and the line would wait in front of every later event)."""
        while True:
            try:
                with self.transaction() as db:
                    return self._insert_events(db, rows)
            except RefusedBeside:  # (a write that waited was set aside: nothing of this was
                continue  # written; made again, with one fewer waiting: never a loop)
            except Exception as exc:
                if not refused_for_good(exc):
                    raise
            with self.transaction() as db:
                return [self._event_or_set_aside(db, row) for row in rows]

    def _event_or_set_aside(self, db: Db, row: tuple[int | None, str, dict[str, Any]]
                            ) -> int | None:
        """Inside a transaction: one event stored (its seq), or, if the store refuses it for
        good, nothing of it (its savepoint undone) and its process told (None)."""
        db.execute("SAVEPOINT event")
        try:
            seq = self._insert_events(db, [row])[0]
        except Exception as exc:
            if not refused_for_good(exc):
                raise
            db.execute("ROLLBACK TO SAVEPOINT event")
            self._tell([row[0]], exc)
            return None
        db.execute("RELEASE SAVEPOINT event")
        return seq

    def _insert_events(self, db: Db, rows: list[tuple[int | None, str, dict[str, Any]]]
                      ) -> list[int]:
        """Inside a transaction (or a deferred write): store events; their seqs, in order.
        On SQLite, several are numbered here, each the next after the highest (as SQLite
        numbers a row: the same seqs), and written by one statement; one alone is numbered by
        SQLite, its seq read back without `RETURNING` (which builds a table for the row): a
        process's start and end each store an event."""
        if not rows:
            return []
        now = self._now()
        if isinstance(db, sqlite3.Connection):
            if len(rows) == 1:
                pid, kind, data = rows[0]
                return [int(db.execute(_EVENT, (now, pid, kind, dump_storable_json(data)))
                            .lastrowid)]
            last = db.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0
            if last + len(rows) < _MAX_SEQ:  # (else SQLite picks them: one at a time)
                seqs = range(last + 1, last + 1 + len(rows))
                db.executemany("INSERT INTO events(seq, ts, pid, kind, data) VALUES (?,?,?,?,?)",
                               [(seq, now, pid, kind, dump_storable_json(data))
                                for seq, (pid, kind, data) in zip(seqs, rows, strict=True)])
                return list(seqs)
        return [int(db.execute(f"{_EVENT} RETURNING seq",
                               (now, pid, kind, dump_storable_json(data))).fetchone()[0])
                for pid, kind, data in rows]

    def events(self, *, pid: int | None = None, after: int = 0) -> list[dict[str, Any]]:
        only, values = where({"pid": pid})
        rows = self._query(f"SELECT * FROM events WHERE seq>?{only} ORDER BY seq",
                           (after, *values))
        return [{**dict(r), "data": read_json(r["data"], f"event {r['seq']}'s data", None)}
                for r in rows]



# The UPDATE statement for each set of a process row's columns written (a handful: the
# kernel's callers write fixed sets), made once: every process's start and end write one.
_UPDATES: dict[tuple[str, ...], str] = {}


def _update_sql(columns: tuple[str, ...]) -> str:
    sql = _UPDATES.get(columns)
    if sql is None:
        sql = f"UPDATE processes SET {', '.join(f'{k}=?' for k in columns)} WHERE pid=?"
        if len(_UPDATES) < 256:  # (bounded, whatever the callers pass)
            _UPDATES[columns] = sql
    return sql


class _DeferredUpdate:
    """`update_process(..., defer=True)`: the write, and the process it is for (`pid`: told
    if the store refuses it, `broker.store.refusals`)."""

    __slots__ = ("fields", "pid", "store")

    def __init__(self, store: ProcessTables, pid: int, fields: dict[str, Any]) -> None:
        self.store, self.pid, self.fields = store, pid, fields

    def __call__(self, db: Db) -> None:
        self.store._update_process(db, self.pid, dict(self.fields))


def _listed_spec(r: Any) -> dict[str, Any]:
    """An image's spec as listed (`libos images`, `--verify`): {} for one that cannot be read
    back, which `--verify` names as edited (a load of it alone is refused `Unreadable`)."""
    try:
        return read_json(r["spec"], f"image {r['name']}:{r['version']}'s spec")
    except Unreadable:
        return {}


def _capability(r: Any) -> Capability:
    """A capability row read back; one that no grant could have written (its policy not
    JSON, its rights not text: edited in the database) is `Tampered`, typed, never a raw
    error out of a kernel's open."""
    try:
        policy = json.loads(r["policy"]) if r["policy"] else None
        return Capability(
            kind=r["kind"], scope=r["scope"], rights=frozenset(r["rights"].split(",")),
            effect=r["effect"], uses=r["uses"], expires=r["expires"], id=r["id"],
            owner=r["owner"], parent=r["parent"], args_hash=r["args_hash"],
            policy=LabelPolicy.from_wire(policy))
    except (ValueError, TypeError, AttributeError, RecursionError, LibosError) as exc:
        # (RecursionError: a policy nested past what the parser takes)
        raise Tampered(f"capability row {ascii(r['id'])[:80]} cannot be read back "
                       f"({type(exc).__name__}): edited in the database") from None
