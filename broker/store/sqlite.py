"""The embedded store: one SQLite file in WAL mode.

Every write is its own committed transaction before the call returns, so what the kernel has
acknowledged survives `kill -9` of the broker (WAL with synchronous=NORMAL loses nothing on a
process crash; only a power cut can take the last commits). All access goes through one
connection under a lock, because wasm tools answer cheap syscalls from a worker thread.

One broker writes a store at a time: a writer holds an exclusive lock on `<db>.lock`, which
lets it keep the head of the audit chain in memory (one INSERT per record, no read-back).
The same file holds the chain's anchor (see `broker.store.anchor`). Readers (the CLI's
tables) open without the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from broker.caps.capability import Capability
from broker.errors import Conflict, InvalidArgument, NotFound
from broker.store import anchor, verify, vouch
from broker.store.audit import (
    ANCHOR_RECORD,
    GENESIS,
    AuditRecord,
    StoredRecord,
    record_hash,
)
from broker.store.durable import DurableState, add_missing_columns

SCHEMA_VERSION = "1"
DURABILITY = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}

_AUDIT_COLUMNS = ("seq, ts, pid, inv, tool, phase, syscall, resource, args_hash, cap_id, detail,"
                  " prev_hash, hash")
_INSERT_AUDIT = (f"INSERT INTO audit({_AUDIT_COLUMNS}, payload)"
                 " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
# Records are read in pages, so a long chain (or its payloads, up to 1 MiB each) is never
# held in memory at once.
_PAGE = 1024
_LIVE_CAPS = """
WITH RECURSIVE kept(id) AS (
    SELECT c.id FROM capabilities c JOIN processes p ON p.pid = c.owner
    WHERE p.state NOT IN ('exited', 'killed')
    UNION
    SELECT c.parent FROM capabilities c JOIN kept ON c.id = kept.id WHERE c.parent IS NOT NULL)
SELECT * FROM capabilities WHERE id IN (SELECT id FROM kept) ORDER BY created, rowid"""
_PAYLOAD_PAGE = 64


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class SQLiteStore(DurableState):
    def __init__(self, path: str | Path, *, clock: Any = time.time, writer: bool = True,
                 durability: str = "normal") -> None:
        """`durability`: "normal" (the default: survives a crash of the broker), "full"
        (an fsync per commit: survives a power cut too), or "off" (benchmarks only)."""
        self.path = str(path)
        self._now = clock
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        if writer:
            self._lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o600)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_fd)
                raise Conflict(f"another broker has {self.path} open") from None
        if durability not in DURABILITY:
            raise ValueError(f"durability is one of {sorted(DURABILITY)}")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={DURABILITY[durability]}")
            self._db.execute("PRAGMA foreign_keys=ON")
            schema = resources.files("broker.store").joinpath("schema.sql").read_text()
            with self._lock:
                self._db.executescript(schema)
                add_missing_columns(self._db)
                self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)",
                                 (SCHEMA_VERSION,))
                last = self._db.execute(
                    "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.Error as exc:
            # Not a store (another file, a damaged database): a typed error, nothing kept.
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            raise InvalidArgument(f"{self.path} is not a libos store: {exc}") from None
        self._head: tuple[int, str] = (last[0], last[1]) if last else (0, GENESIS)
        if self._lock_fd is not None:
            self._check_anchor()

    def _check_anchor(self) -> None:
        """Opening as the writer: a chain that does not reach its anchor is recorded in the
        chain before anything else is appended (which moves the anchor on)."""
        problem = anchor.check(anchor.read(self.path + ".lock"), self._head[0], self.hash_at)
        if problem is not None:
            self.append_audit(AuditRecord(phase="admin", syscall=ANCHOR_RECORD,
                                          detail={"problem": problem}))
        elif self._head[0]:
            anchor.write(self._lock_fd, *self._head)  # type: ignore[arg-type]

    def hash_at(self, seq: int) -> str | None:
        rows = self._query("SELECT hash FROM audit WHERE seq=?", (seq,))
        return rows[0]["hash"] if rows else None

    def anchor_problem(self) -> str | None:
        """What is wrong between the chain's head and its anchor, or None."""
        last = self._query("SELECT MAX(seq) AS seq FROM audit")[0]["seq"] or 0
        return anchor.check(anchor.read(self.path + ".lock"), last, self.hash_at)

    def audit_problems(self, *, after: int = 0, pid: int | None = None
                       ) -> tuple[int, list[str]]:
        """Verify the audit (see `broker.store.verify`): the whole of it, or the stretch
        after `after` and what process `pid` stored beside it."""
        return verify.audit_problems(self, after=after, pid=pid)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    @property
    def head_seq(self) -> int:
        """The seq of the newest audit record this writer appended (or found)."""
        return self._head[0]

    def _require_writer(self) -> None:
        if self._lock_fd is None:
            raise Conflict("this store was opened read-only")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: the write lock is taken up front, so two brokers (or a CLI
        answering an approval) never interleave a read-modify-write."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            cur = self._db.execute(sql, params)
            cur.row_factory = sqlite3.Row
            return cur.fetchall()

    # -- images ------------------------------------------------------------------------------

    def put_image(self, name: str, version: str, spec: dict[str, Any]) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT spec FROM images WHERE name=? AND version=?",
                             (name, version)).fetchone()
            if row is not None:
                if json.loads(row[0]) != spec:
                    raise Conflict(f"image {name}:{version} is already registered differently")
                return
            db.execute("INSERT INTO images(name, version, spec, created) VALUES (?,?,?,?)",
                       (name, version, _json(spec), self._now()))

    def get_image(self, name: str, version: str | None = None) -> tuple[str, dict[str, Any]]:
        if version is None:
            rows = self._query("SELECT version, spec FROM images WHERE name=? "
                               "ORDER BY created DESC LIMIT 1", (name,))
        else:
            rows = self._query("SELECT version, spec FROM images WHERE name=? AND version=?",
                               (name, version))
        if not rows:
            raise NotFound(f"no image {name}" + (f":{version}" if version else ""))
        return rows[0]["version"], json.loads(rows[0]["spec"])

    # -- processes ---------------------------------------------------------------------------

    def insert_process(self, *, parent: int | None, image: str, version: str, state: str,
                       root: str, cwd: str) -> int:
        now = self._now()
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO processes(parent, image, version, state, root, cwd, usage, created,"
                " updated) VALUES (?,?,?,?,?,?,?,?,?)",
                (parent, image, version, state, root, cwd, "{}", now, now))
            return int(cur.lastrowid or 0)

    def update_process(self, pid: int, **fields: Any) -> None:
        with self.transaction() as db:
            self._update_process(db, pid, fields)

    def _update_process(self, db: sqlite3.Connection, pid: int, fields: dict[str, Any]) -> None:
        for key in ("usage", "result"):
            if key in fields:
                fields[key] = _json(fields[key])
        fields["updated"] = self._now()
        columns = ", ".join(f"{k}=?" for k in fields)
        db.execute(f"UPDATE processes SET {columns} WHERE pid=?", (*fields.values(), pid))

    def get_process(self, pid: int) -> dict[str, Any]:
        rows = self._query("SELECT * FROM processes WHERE pid=?", (pid,))
        if not rows:
            raise NotFound(f"no process {pid}")
        return self._process_row(rows[0])

    def live_pids(self) -> list[int]:
        return [r["pid"] for r in self._query(
            "SELECT pid FROM processes WHERE state NOT IN ('exited', 'killed') ORDER BY pid")]

    def children_of(self, pid: int) -> list[int]:
        return [r["pid"] for r in self._query(
            "SELECT pid FROM processes WHERE parent=? ORDER BY pid", (pid,))]

    def list_processes(self) -> list[dict[str, Any]]:
        return [self._process_row(r) for r in self._query("SELECT * FROM processes ORDER BY pid")]

    @staticmethod
    def _process_row(row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        out["usage"] = json.loads(out["usage"])
        out["result"] = None if out["result"] is None else json.loads(out["result"])
        return out

    # -- capabilities ------------------------------------------------------------------------

    def insert_capabilities(self, entries: list[tuple[str, Capability]],
                            updated: list[Capability] = ()) -> None:  # type: ignore[assignment]
        """Insert new capabilities and, in the same transaction, the new use counts of the
        counted capabilities they were carved from."""
        now = self._now()
        with self.transaction() as db:
            db.executemany("UPDATE capabilities SET uses=? WHERE id=?",
                           [(c.uses, c.id) for c in updated])
            db.executemany(
                "INSERT INTO capabilities(id, owner, handle, kind, scope, rights, effect, uses,"
                " expires, parent, args_hash, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(c.id, c.owner, h, c.kind, c.scope, ",".join(sorted(c.rights)), c.effect,
                  c.uses, c.expires, c.parent, c.args_hash, now) for h, c in entries])

    def delete_capabilities(self, cap_ids: list[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM capabilities WHERE id=?", [(i,) for i in cap_ids])

    def load_capabilities(self, *, live: bool = False) -> list[tuple[str, Capability]]:
        """Every capability; with `live`, those of live processes and the ones they derive
        from (a revocation reaches down from them), not those of processes long ended."""
        rows = self._query(_LIVE_CAPS if live else
                           "SELECT * FROM capabilities ORDER BY created, rowid")
        return [(r["handle"], Capability(
            kind=r["kind"], scope=r["scope"], rights=frozenset(r["rights"].split(",")),
            effect=r["effect"], uses=r["uses"], expires=r["expires"], id=r["id"],
            owner=r["owner"], parent=r["parent"], args_hash=r["args_hash"])) for r in rows]

    # -- object memory -----------------------------------------------------------------------

    def put_type(self, name: str, schema: dict[str, Any]) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT schema FROM object_types WHERE name=?", (name,)).fetchone()
            if row is not None and json.loads(row[0]) != schema:
                raise Conflict(f"object type {name!r} is already defined differently")
            db.execute("INSERT OR IGNORE INTO object_types(name, schema) VALUES (?,?)",
                       (name, _json(schema)))

    def object_types(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: json.loads(r["schema"])
                for r in self._query("SELECT name, schema FROM object_types")}

    def put_object(self, ns: str, name: str, type_: str, payload: Any, *, pid: int | None,
                   expect_version: int | None) -> int:
        with self.transaction() as db:
            row = db.execute("SELECT MAX(version) FROM objects WHERE ns=? AND name=?",
                             (ns, name)).fetchone()
            current = row[0] or 0
            if expect_version is not None and expect_version != current:
                raise Conflict(f"object {ns}/{name} is at version {current}, "
                               f"not {expect_version}")
            version = current + 1
            db.execute("INSERT INTO objects(ns, name, version, type, payload, pid, created)"
                       " VALUES (?,?,?,?,?,?,?)",
                       (ns, name, version, type_, _json(payload), pid, self._now()))
            return version

    def get_object(self, ns: str, name: str, version: int | None = None) -> dict[str, Any]:
        if version is None:
            rows = self._query("SELECT * FROM objects WHERE ns=? AND name=? "
                               "ORDER BY version DESC LIMIT 1", (ns, name))
        else:
            rows = self._query("SELECT * FROM objects WHERE ns=? AND name=? AND version=?",
                               (ns, name, version))
        if not rows:
            raise NotFound(f"no object {ns}/{name}" + (f" version {version}" if version else ""))
        return self._object_row(rows[0])

    def list_objects(self, ns: str | None = None, prefix: str = "") -> list[dict[str, Any]]:
        """The newest version of each object (in `ns`, or everywhere), without payloads."""
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._query(
            "SELECT ns, name, MAX(version) AS version, type FROM objects "
            "WHERE (? IS NULL OR ns=?) AND name LIKE ? ESCAPE '\\' "
            "GROUP BY ns, name ORDER BY ns, name", (ns, ns, like))
        return [dict(r) for r in rows]

    @staticmethod
    def _object_row(row: sqlite3.Row) -> dict[str, Any]:
        out = dict(row)
        out["payload"] = json.loads(out["payload"])
        return out

    # -- tools -------------------------------------------------------------------------------

    def put_tool_source(self, hash_: str, lang: str, source: bytes) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO tool_sources(hash, lang, source) VALUES (?,?,?)",
                       (hash_, lang, source))

    def get_tool_source(self, hash_: str) -> tuple[str, bytes]:
        """A stored tool source, checked against its hash (`Tampered` if edited)."""
        rows = self._query("SELECT lang, source FROM tool_sources WHERE hash=?", (hash_,))
        if not rows:
            raise NotFound(f"no tool source {hash_}")
        return rows[0]["lang"], vouch.check_source(hash_, bytes(rows[0]["source"]))

    def put_process_tool(self, pid: int, name: str, spec: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO process_tools(pid, name, spec) VALUES (?,?,?)",
                       (pid, name, _json(spec)))

    def tool_source_hashes(self) -> list[str]:
        return [r["hash"] for r in self._query("SELECT hash FROM tool_sources ORDER BY hash")]

    def stored_tool_source(self, hash_: str) -> bytes | None:
        """A tool source as stored, unchecked: for verification."""
        rows = self._query("SELECT source FROM tool_sources WHERE hash=?", (hash_,))
        return bytes(rows[0]["source"]) if rows else None

    def stored_registrations(self, pid: int | None = None
                             ) -> list[tuple[int, str, dict[str, Any]]]:
        """The `process_tools` rows as stored (pid, name, spec), unchecked: for verification.
        A spec that is not a JSON object reads as {} (it names no code)."""
        out = []
        for r in self._query("SELECT pid, name, spec FROM process_tools WHERE (? IS NULL OR"
                             " pid=?) ORDER BY pid, name", (pid, pid)):
            try:
                spec = json.loads(r["spec"])
            except ValueError:
                spec = None
            out.append((r["pid"], r["name"], spec if isinstance(spec, dict) else {}))
        return out

    def process_tools(self, pid: int) -> dict[str, dict[str, Any]]:
        """A process's registered tools, each checked against the registration the chain
        records. A registration a crash cut off (its outcome unknown) is left out: the chain
        cannot say what it named. One the chain does not vouch for is kept with `refused`
        set to the problem, so that calling it fails as `Tampered`."""
        rows = self.stored_registrations(pid)
        if not rows:
            return {}
        registered = vouch.Registrations()
        for stored in self.audit_records(pid=pid):
            registered.see(stored)
        tools: dict[str, dict[str, Any]] = {}
        for _, name, spec in rows:
            if registered.is_unsettled(pid, name):
                continue
            problem = registered.tool_problem(pid, name, spec)
            tools[name] = spec if problem is None else vouch.refused_tool(spec, problem)
        return tools

    # -- events ------------------------------------------------------------------------------

    def append_event(self, pid: int | None, kind: str, data: dict[str, Any]) -> int:
        return self.append_events([(pid, kind, data)])[0]

    def append_events(self, rows: list[tuple[int | None, str, dict[str, Any]]]) -> list[int]:
        """Store events in one transaction; returns their seqs, in order."""
        now, seqs = self._now(), []
        with self.transaction() as db:
            for pid, kind, data in rows:
                cur = db.execute("INSERT INTO events(ts, pid, kind, data) VALUES (?,?,?,?)",
                                 (now, pid, kind, _json(data)))
                seqs.append(int(cur.lastrowid or 0))
        return seqs

    def events(self, *, pid: int | None = None, after: int = 0) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM events WHERE seq>? AND (? IS NULL OR pid=?) "
                           "ORDER BY seq", (after, pid, pid))
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    # -- approvals ---------------------------------------------------------------------------

    def insert_approval(self, row: dict[str, Any]) -> None:
        self._require_writer()
        columns = ", ".join(row)
        with self.transaction() as db:
            db.execute(f"INSERT INTO approvals({columns}) VALUES ({','.join('?' * len(row))})",
                       tuple(row.values()))

    def get_approval(self, approval_id: str) -> dict[str, Any]:
        rows = self._query("SELECT * FROM approvals WHERE id=?", (approval_id,))
        if not rows:
            raise NotFound("no such approval request")
        return dict(rows[0])

    def list_approvals(self, state: str | None = "pending") -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM approvals WHERE (? IS NULL OR state=?) "
                           "ORDER BY created, rowid", (state, state))
        return [dict(r) for r in rows]

    def answer_approval(self, approval_id: str, *, state: str, answer: str, who: str,
                        now: float, scope: str | None = None, value: str | None = None) -> None:
        """Write a person's answer into a pending request. Allowed on a read-only store too:
        a front end in another OS process answers this way, and the broker that owns the
        store audits and applies the answer. Unknown ids are `NotFound`; answered, expired
        or cancelled requests are `Conflict`."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE approvals SET state=?, answer=?, who=?, scope=?, value=?, answered=? "
                "WHERE id=? AND state='pending' AND deadline>?",
                (state, answer, who, scope, value, now, approval_id, now))
            if cur.rowcount == 1:
                return
            row = db.execute("SELECT state FROM approvals WHERE id=?", (approval_id,)).fetchone()
        if row is None:
            raise NotFound("no such approval request")
        if row[0] == "pending":
            raise Conflict(f"approval request {approval_id} has expired")
        raise Conflict(f"approval request {approval_id} is already {row[0]}")

    def pending_approvals_of(self, pid: int, syscall: str, args_hash: str
                             ) -> list[dict[str, Any]]:
        """The pending requests of one process for one call (by index, not a scan)."""
        rows = self._query("SELECT * FROM approvals WHERE pid=? AND state='pending' AND "
                           "syscall=? AND args_hash=? ORDER BY created, rowid",
                           (pid, syscall, args_hash))
        return [dict(r) for r in rows]

    def settle_approvals(self, state: str, now: float,
                         record: Callable[[dict[str, Any]], AuditRecord], *,
                         ids: list[str] | None = None, pid: int | None = None,
                         answered_too: bool = False,
                         process: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Close requests without granting anything (expired, cancelled): those in `ids`, or
        every one of process `pid`; pending ones, and with `answered_too` answered ones not yet
        applied. Each closed request gets its audit record (`record(row)`), and with `process`
        the process row of `pid` is updated, all in one transaction. Returns the closed rows."""
        self._require_writer()
        if ids is not None and not ids:
            return []
        states = ("pending", "approved", "denied") if answered_too else ("pending",)
        sql = (f"SELECT * FROM approvals WHERE state IN ({','.join('?' * len(states))}) "
               "AND applied IS NULL")
        params: tuple[Any, ...] = states
        if pid is not None:
            sql, params = sql + " AND pid=?", (*params, pid)
        if ids is not None:
            sql, params = sql + f" AND id IN ({','.join('?' * len(ids))})", (*params, *ids)
        with self.audited() as (db, append):
            if process is not None and pid is not None:
                self._update_process(db, pid, process)
            cur = db.execute(sql + " ORDER BY created, rowid", params)
            cur.row_factory = sqlite3.Row
            rows = [dict(r) for r in cur.fetchall()]
            for row in rows:
                db.execute("UPDATE approvals SET state=?, answered=COALESCE(answered, ?), "
                           "applied=? WHERE id=?", (state, now, now, row["id"]))
                row.update(state=state, applied=now)
                append(record(row))
        return rows

    def unapplied_answers(self) -> list[dict[str, Any]]:
        """Answers written (by another OS process) and not applied yet: a partial index holds
        only these, so the broker's watcher looks at nothing else."""
        rows = self._query("SELECT * FROM approvals INDEXED BY approvals_unapplied WHERE "
                           "applied IS NULL AND state IN ('approved', 'denied') "
                           "ORDER BY answered, rowid")
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
                       grant_id: str | None, carved: Sequence[Capability] = ()) -> None:
        """Mark an answer applied, insert the capabilities it grants and store the uses left
        to the capability they were carved from, in one transaction: an answer takes effect
        exactly once."""
        self._require_writer()
        now = self._now()
        with self.transaction() as db:
            cur = db.execute("UPDATE approvals SET applied=?, grant_id=? WHERE id=? "
                             "AND applied IS NULL AND state IN ('approved', 'denied')",
                             (now, grant_id, approval_id))
            if cur.rowcount != 1:
                raise Conflict(f"approval request {approval_id} was already applied")
            db.executemany("UPDATE capabilities SET uses=? WHERE id=?",
                           [(c.uses, c.id) for c in carved])
            db.executemany(
                "INSERT INTO capabilities(id, owner, handle, kind, scope, rights, effect, uses,"
                " expires, parent, args_hash, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [(c.id, c.owner, h, c.kind, c.scope, ",".join(sorted(c.rights)), c.effect,
                  c.uses, c.expires, c.parent, c.args_hash, now) for h, c in entries])

    def log_approval_reject(self, detail: dict[str, Any]) -> None:
        """A refused answer from a front end that may not write the audit (read-only store):
        kept here until the broker moves it into the audit chain."""
        with self.transaction() as db:
            db.execute("INSERT INTO approval_rejects(ts, detail) VALUES (?,?)",
                       (self._now(), _json(detail)))

    def take_approval_rejects(self) -> list[dict[str, Any]]:
        self._require_writer()
        if not self._query("SELECT 1 FROM approval_rejects LIMIT 1"):
            return []  # the usual case: a read, not a write transaction, per watcher tick
        with self.transaction() as db:
            rows = db.execute("SELECT seq, ts, detail FROM approval_rejects ORDER BY seq"
                              ).fetchall()
            db.execute("DELETE FROM approval_rejects WHERE seq<=?",
                       (rows[-1][0] if rows else 0,))
        return [{"ts": r[1], **json.loads(r[2])} for r in rows]

    # -- audit -------------------------------------------------------------------------------

    def append_audit(self, record: AuditRecord, *, spend: Capability | None = None,
                     spent_uses: int | None = None, payload: bytes | None = None) -> int:
        """Append one record to the chain. With `spend`, use one of that capability's uses in
        the same transaction: the record and the spending stand or fall together, and a use
        that another writer took first makes this a `Conflict`. With `payload` (an outcome's
        full result, or a tool call's full arguments, for replay), keep it in the record's
        row."""
        self._require_writer()
        with self._lock:
            row, (seq, digest) = self._chain_row(record, self._head, payload)
            if spend is None:
                self._db.execute(_INSERT_AUDIT, row)  # autocommit: one statement, durable
            else:
                with self.transaction() as db:
                    if spent_uses:
                        cur = db.execute("UPDATE capabilities SET uses=? WHERE id=? AND uses=?",
                                         (spent_uses, spend.id, spent_uses + 1))
                    else:
                        cur = db.execute("DELETE FROM capabilities WHERE id=? AND uses=1",
                                         (spend.id,))
                    if cur.rowcount != 1:
                        raise Conflict("capability use already spent")
                    if not spent_uses:
                        # Keep the lineage: what was derived from a used-up capability
                        # still dies when one of its ancestors is revoked.
                        db.execute("UPDATE capabilities SET parent=? WHERE parent=?",
                                   (spend.parent, spend.id))
                    db.execute(_INSERT_AUDIT, row)
            self._head = (seq, digest)
            anchor.write(self._lock_fd, seq, digest)  # type: ignore[arg-type]
            return seq

    def _chain_row(self, record: AuditRecord, head: tuple[int, str], payload: bytes | None
                   ) -> tuple[tuple[Any, ...], tuple[int, str]]:
        """The audit row that follows `head` in the chain, and the new head."""
        detail = _json(record.detail)
        seq, prev = head[0] + 1, head[1]
        ts = self._now()
        digest = record_hash(seq, ts, record, detail, prev)
        return (seq, ts, record.pid, record.inv, record.tool, record.phase, record.syscall,
                record.resource, record.args_hash, record.cap_id, detail, prev, digest,
                payload), (seq, digest)

    @contextmanager
    def audited(self) -> Iterator[tuple[sqlite3.Connection, Callable[[AuditRecord], int]]]:
        """One transaction that changes rows and appends audit records: all of it is
        durable, or none of it. Yields the connection and an `append(record)`."""
        self._require_writer()
        with self._lock:
            heads = [self._head]

            def append(record: AuditRecord) -> int:
                row, head = self._chain_row(record, heads[-1], None)
                db.execute(_INSERT_AUDIT, row)
                heads.append(head)
                return head[0]

            with self.transaction() as db:
                yield db, append
            if len(heads) > 1:
                self._head = heads[-1]
                anchor.write(self._lock_fd, *self._head)  # type: ignore[arg-type]

    def audit_records(self, *, pid: int | None = None, after: int = 0,
                      limit: int | None = None) -> Iterator[StoredRecord]:
        for r in self._audit_rows(_AUDIT_COLUMNS, _PAGE, pid=pid, after=after, limit=limit):
            yield _stored(r)

    def audit_records_with_payloads(self, *, after: int = 0
                                    ) -> Iterator[tuple[StoredRecord, bytes | None]]:
        for r in self._audit_rows(f"{_AUDIT_COLUMNS}, payload", _PAYLOAD_PAGE, pid=None,
                                  after=after, limit=None):
            yield _stored(r), None if r["payload"] is None else bytes(r["payload"])

    def vouched_payload(self, stored: StoredRecord) -> bytes | None:
        """The payload kept beside a record, if the record is intact and vouches for it;
        `Tampered` (naming the record) otherwise."""
        return vouch.check_payload(stored, self.payload(stored.seq))

    def _audit_rows(self, columns: str, page: int, *, pid: int | None, after: int,
                    limit: int | None) -> Iterator[sqlite3.Row]:
        while limit is None or limit > 0:
            size = page if limit is None else min(page, limit)
            rows = self._query(f"SELECT {columns} FROM audit WHERE seq>? AND (? IS NULL OR"
                               " pid=?) ORDER BY seq LIMIT ?", (after, pid, pid, size))
            yield from rows
            if len(rows) < size:
                return
            after = rows[-1]["seq"]
            if limit is not None:
                limit -= len(rows)


def _stored(r: sqlite3.Row) -> StoredRecord:
    try:
        detail = json.loads(r["detail"])
    except (TypeError, ValueError):
        detail = None  # edited into something unreadable: its hash check reports it
    record = AuditRecord(
        phase=r["phase"], syscall=r["syscall"], pid=r["pid"], inv=r["inv"], tool=r["tool"],
        resource=r["resource"], args_hash=r["args_hash"], cap_id=r["cap_id"],
        detail=detail if isinstance(detail, dict) else {})
    return StoredRecord(r["seq"], r["ts"], record, r["detail"], r["prev_hash"], r["hash"])
