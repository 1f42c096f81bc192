"""Durable process state: step history, checkpoints, control requests from other OS
processes, pause holds and the store's own notes (`meta`); mailboxes and raised events are
`broker.store.mail_rows`'s.

A mixin of `SQLiteStore` (see `broker.store.connection`): every method is one committed
transaction, so what it returns is on disk before the caller acts on it (the one exception,
asked for by name: a checkpoint saved with `defer`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from functools import cache
from typing import Any

from broker.errors import Conflict, InvalidArgument, NotCapable, NotFound, ProtocolError
from broker.json_text import encoder
from broker.lifecycle import State
from broker.store import control_sig
from broker.store.audit import CONTROL_RECORD, GENESIS
from broker.store.checkpoints import Checkpoint, CheckpointBatch, CheckpointLog, read_state
from broker.store.json_column import Unreadable, read_json, read_json_or_none
from broker.store.keys import AuditKey
from broker.store.mail_rows import MailRows

# Encoders built once (`json.dumps` with options builds one per call; `JSONEncoder.encode`
# a C encoder per call, as much again as a checkpoint's text: `encoder` builds it once).
_JSON = encoder(default=repr)
# What a model wrote may hold lone surrogates, which SQLite cannot take as UTF-8.
_ASCII_JSON = json.JSONEncoder(separators=(",", ":"), default=repr)


def _json(value: Any) -> str:
    return _JSON(value)


def _ascii_json(value: Any) -> str:
    return _ASCII_JSON.encode(value)


def _storable_json(value: Any) -> str:
    """`_json`, or escaped (`_ascii_json`) if it holds a lone surrogate, which no database
    takes as UTF-8: for a write deferred to whoever commits next (a checkpoint holding a
    planner's action), which would otherwise fail each commit of every process after it.
    (`isascii` is O(1): only non-ASCII text is checked.)"""
    text = _JSON(value)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            return _ASCII_JSON.encode(value)  # (read back as the same value)
    return text


def _step(pid: int, row: Any) -> str:
    return f"process {pid}'s step {row['step']}"


def _load(text: str | None, what: str) -> Any:
    return read_json_or_none(text, what, None)


# Done control requests are kept for the commands that read them back (`libos fork` its new
# pid, `libos pause` that it was applied, each looking every 50 ms for `--wait` seconds): an
# hour, or fewer beyond the newest KEEP_DONE, never one done in the last minute.
KEEP_DONE_FOR = 3600.0
KEEP_DONE = 1000
KEEP_RECENT = 60.0

# The pending requests (through `control_pending`), each with its process's state (None: no
# such process).
_PENDING = ("SELECT c.id, c.verb, c.pid, c.arg, p.state, c.created, c.sig FROM control c"
            " LEFT JOIN processes p ON p.pid = c.pid WHERE c.done IS NULL ORDER BY c.id")
_PENDING_OTHERS = ("SELECT c.verb, c.pid, p.state FROM control c LEFT JOIN processes p"
                   " ON p.pid = c.pid WHERE c.done IS NULL")
_TAKE = object()
_ENDED = frozenset({State.EXITED.value, State.KILLED.value})
# The live processes below one (its end may leave its children running: a kill of it kills
# them, `broker.kernel.tree_kill`). UNION, not UNION ALL: a lineage that loops (rows anyone
# who writes the database may write) ends the walk instead of running for ever.
_LIVE_BELOW = ("WITH RECURSIVE below(pid) AS (SELECT pid FROM processes WHERE parent=?"
               " UNION SELECT p.pid FROM processes p JOIN below b ON p.parent=b.pid)"
               " SELECT p.pid FROM processes p JOIN below b ON p.pid=b.pid"
               " WHERE p.state NOT IN (?, ?) ORDER BY p.pid")


def _verdict(verb: str, pid: int | None, state: str | None,
             pids: Collection[int] | None, live_below: Callable[[int], list[int]]) -> Any:
    """What a broker running `pids` (None: all) does with a pending request: `_TAKE` it, leave
    it (None: another broker's live process) or answer it now with a typed error, which
    `libos` reports: nobody will ever apply it. An ended process is nobody's to run, so a fork
    from it (which any broker may do) is taken by whichever broker looks first; a kill of one
    with live processes below it (`live_below`) kills those, so it is taken by a broker that
    runs one of them (any, with `pids` None)."""
    if state is None:
        return {"error": NotFound.code, "message": f"process {pid} does not exist"}
    if state in _ENDED:
        if verb == "fork":
            return _TAKE
        if verb == "kill" and pid is not None and (below := live_below(pid)):
            return _TAKE if pids is None or any(p in pids for p in below) else None
        return {"error": Conflict.code, "message": f"process {pid} has ended ({state})"}
    return _TAKE if pids is None or pid in pids else None


# An expiry's detail as `ApprovalQueue._settle` writes it (its first keys, in order): a tool's
# text is inside a JSON string there, its quotes escaped, so it cannot begin a record so.
_EXPIRY = """detail LIKE '{"request":%"state":%"expired"%'"""

class DurableState(MailRows, CheckpointLog):
    _key: AuditKey | None  # the writer's key, which signs its own control requests
    _place: str  # where the store is, as a control request names it (`identity`)
    _born: str | None = None  # the hash of the chain's first record, once there is one

    @property
    def identity(self) -> str:
        """The store as a control request (or an answer through the store) names the one it
        was made for (`control_sig`): where it is (the SQLite file's resolved path, or the
        database as `location.database_name` names it) and the hash of its chain's first
        record, made when the store was: one removed and made again there is another store,
        whose pids start again at 1 (red team 19). A writer who copies the old first record
        in breaks the link of the record after it (or the head this writer keeps), and a
        request is admitted only while the chain is whole (`control_requests`). No record
        yet: no process either, so nothing to ask of one (`GENESIS` stands in). A writer's
        broker takes it as its open's walk found it, not from the column when first asked: a
        writer editing the column after that walk breaks no link the walk reads again; a
        reader (the CLI signing) reads the first record the walk reads, from seq 1 on (a row
        below it is walked by nobody: red team 27)."""
        if self._born is None:
            if self._lock_fd is not None:
                links = self.chain_links()
                links.walk()  # (a writer's open walked it all; a fresh store: its first now)
                self._born = links.first
            else:
                rows = self._query("SELECT hash FROM audit WHERE seq > 0 ORDER BY seq LIMIT 1")
                if rows:  # (kept: the first record is never appended again)
                    self._born = str(rows[0][0])
        return f"{self._place} {self._born or GENESIS}"
    # The deferred checkpoints waiting for the next transaction, written together.
    _checkpoints_waiting: CheckpointBatch | None = None

    # -- steps and checkpoints ------------------------------------------------------------------

    def save_checkpoint(self, pid: int, step: int, state: dict[str, Any] | str,
                        observation: dict[str, Any] | None = None,
                        turns: dict[int, Any] | None = None, *, defer: bool = False,
                        action_text: str | None = None) -> None:
        """Write a checkpoint, and with it the observation that ended the step and the
        planner turns added or changed since the last one (all or nothing: a checkpoint never
        points past the history it stands on). It is logged to fork from (`checkpoint_log`).
        `defer`: committed with the next write instead of on its own (`defer` of the
        connection): for the checkpoint before a step, whose next write is the step's intent.
        `state` may come as its JSON text already (`broker.kernel.checkpoint_text`: ASCII, so
        storable). `action_text`: the observation's action as that text already.

        Deferred checkpoints (of every process) that wait for the same transaction are written
        together by the first of them (`CheckpointBatch`), at its place among the deferred
        writes: each of the others goes earlier than it would alone, never later, and in the
        same transaction.
        """
        # Serialised now: a deferred write keeps what the caller saved, not what it changes.
        text = state if type(state) is str else _storable_json(state)
        item = Checkpoint(pid, step, text, None if observation is None else (
            observation["step"], action_text or _storable_json(observation["action"]),
            _storable_json(observation["result"]),
            _storable_json(observation["error"]) if observation["error"] else None),
            [(n, None if t is None else _ascii_json(t)) for n, t in (turns or {}).items()])
        if not defer:
            with self.transaction() as db:
                self._write_checkpoints(db, [item])
            return
        with self._lock:  # (a transaction on another thread takes the batch whole, or not)
            waiting = self._checkpoints_waiting
            if waiting is not None and not waiting.ran and not self._fenced():
                waiting.items.append(item)  # committed with the batch, already counted
                return
            self._checkpoints_waiting = batch = CheckpointBatch(self._write_checkpoints, [item])
            self.defer(batch)

    def checkpoint(self, pid: int) -> dict[str, Any] | None:
        """The latest checkpoint (the newest in the log, which always keeps it), with its id."""
        rows = self._query("SELECT id, step, state, created FROM checkpoint_log WHERE pid=?"
                           " ORDER BY id DESC LIMIT 1", (pid,))
        if not rows:
            return None
        return {"step": rows[0]["step"], "state": read_state(rows[0]["state"],
                                                              f"process {pid}'s checkpoint"),
                "created": rows[0]["created"], "id": rows[0]["id"]}

    def observations(self, pid: int, start: int = 0, stop: int | None = None
                     ) -> list[dict[str, Any]]:
        """Steps `start` (inclusive) to `stop` (exclusive; default: all) of a history."""
        return [{"step": r["step"], "action": read_json(r["action"], f"{_step(pid, r)}'s action"),
                 "result": _load(r["result"], f"{_step(pid, r)}'s result"),
                 "error": _load(r["error"], f"{_step(pid, r)}'s error")}
                for r in self._query("SELECT * FROM observations WHERE pid=? AND step>=? AND"
                                     " step<? ORDER BY step",
                                     (pid, start, (1 << 62) if stop is None else stop))]

    def history_length(self, pid: int) -> int:
        return int(self._query("SELECT COUNT(*) AS n FROM observations WHERE pid=?",
                               (pid,))[0]["n"])

    def planner_turns(self, pid: int, count: int, first: int = 1) -> list[Any]:
        """A process's conversation: its goal (turn 0), then turns `first` to `count - 1`
        (those before `first` were dropped)."""
        return [read_json(r["turn"], f"process {pid}'s planner turn", None) for r in self._query(
            "SELECT turn FROM planner_turns WHERE pid=? AND (n=0 OR (n>=? AND n<?))"
            " ORDER BY n", (pid, first, count))]

    def copy_history(self, source: int, target: int, upto: int) -> None:
        """A fork starts with its parent's history up to a step, and its conversation."""
        with self.transaction() as db:
            db.execute("INSERT INTO observations(pid, step, action, result, error) SELECT"
                       " ?, step, action, result, error FROM observations WHERE pid=? AND"
                       " step<?", (target, source, upto))
            db.execute("INSERT INTO planner_turns(pid, n, turn) SELECT ?, n, turn FROM"
                       " planner_turns WHERE pid=?", (target, source))

    # -- control requests ------------------------------------------------------------------------

    def add_control(self, verb: str, pid: int | None, arg: Any = None, *,
                    signer: AuditKey | None = None) -> int:
        """Ask the broker that holds this store to do something (pause, resume, kill, fork
        with `arg` its checkpoint), signed by `signer` (default: this writer's own key): a
        broker applies only a request signed by a key it trusts (`control_sig`). No key:
        `NotCapable`, and no row."""
        key = signer if signer is not None else self._key
        if key is None:
            raise NotCapable("a control request is signed with the user's audit key, and this"
                             " store was opened without one")
        text = None if arg is None else _json(arg)
        with self.transaction() as db:
            created = self._now()
            self._notify(db, "control")
            return int(db.execute(
                "INSERT INTO control(verb, pid, created, arg, sig) VALUES (?,?,?,?,?)"
                " RETURNING id", (verb, pid, created, text, control_sig.sign(
                    key, self.identity, verb, pid, text, created))).fetchone()[0])

    def finish_control(self, request: int, result: Any) -> None:
        """What applying a request gave: a fork's new pid, `{applied: true}` for the other
        verbs, or the typed error that refused it."""
        self.finish_controls([(request, result)])

    def finish_controls(self, answers: Collection[tuple[int, Any]]) -> None:
        """`finish_control` for each (request, result), in one commit."""
        with self.transaction() as db:
            db.executemany("UPDATE control SET result=? WHERE id=?",
                           [(_json(result), request) for request, result in answers])

    def control_result(self, request: int) -> Any:
        """What applying it gave (`finish_control`), or `{error, message}` for any verb the
        store answered itself (its process has ended, or never existed); None meanwhile."""
        rows = self._query("SELECT result FROM control WHERE id=?", (request,))
        try:  # (a row anyone who writes the database may write)
            return _load(rows[0]["result"], f"request {request}'s answer") if rows else None
        except Unreadable:
            return {"error": ProtocolError.code,
                    "message": f"request {request}'s answer is not JSON"}

    def live_below(self, pid: int) -> list[int]:
        """The live processes below `pid` in its lineage (what a kill of it also kills)."""
        return [r[0] for r in self._query(_LIVE_BELOW, (pid, *sorted(_ENDED)))]

    def control_done(self, request: int) -> bool:
        rows = self._query("SELECT done FROM control WHERE id=?", (request,))
        return bool(rows) and rows[0]["done"] is not None

    def take_controls(self, pids: Collection[int] | None = None) -> list[dict[str, Any]]:
        """The requests not yet taken (of processes `pids` only, if given: one broker of
        many takes those of the processes it runs), marked taken. A request no broker will
        ever apply is answered here instead, by whichever broker looks (`_verdict`): its
        process has ended (a fork from it is taken all the same) or never existed.

        The broker asks several times a second, and mostly there are none: they are looked
        for first by a read through the index of pending requests (`control_pending`), which
        takes no write lock (a request another OS process committed is seen by the next look;
        one committed after, by the one after); only one found to take or answer is, under
        the lock, looked for again there (another broker may have taken it meanwhile). Done
        requests past their keeping go in the same transaction (`_trim_controls`)."""
        waiting = self._query("SELECT pid FROM control WHERE done IS NULL")
        if not waiting:
            return []
        below = cache(self.live_below)  # (a walk per pid, not per request)
        if pids is not None and not any(r[0] in pids for r in waiting) and all(
                _verdict(*r, pids, below) is None for r in self._query(_PENDING_OTHERS)):
            return []  # other brokers' (their processes live): left to them
        taken: list[dict[str, Any]] = []
        with self.transaction() as db:
            now = self._now()

            @cache
            def live_below(pid: int) -> list[int]:
                rows = db.execute(_LIVE_BELOW, (pid, *sorted(_ENDED))).fetchall()
                return [r[0] for r in rows]

            for id_, verb, pid, text, state, created, sig in db.execute(_PENDING).fetchall():
                verdict = _verdict(verb, pid, state, pids, live_below)
                if verdict is None:
                    continue
                if verdict is _TAKE:
                    try:  # (a row anyone who writes the database may write)
                        arg = _load(text, f"request {id_}'s argument")
                    except Unreadable:
                        verdict = {"error": InvalidArgument.code,
                                   "message": "its argument is not JSON"}
                db.execute("UPDATE control SET done=?, result=? WHERE id=?",
                           (now, None if verdict is _TAKE else _json(verdict), id_))
                if verdict is _TAKE:
                    # (with what its signature covers, as stored: `control_sig`)
                    taken.append({"id": id_, "verb": verb, "pid": pid, "arg": arg,
                                  "arg_text": text, "created": created, "sig": sig,
                                  "taken": now})
            self._trim_controls(db, now)
        return taken

    def control_records(self, after: int) -> list[tuple[int, Any]]:
        """The chain's records of the control requests brokers took (`CONTROL_RECORD`), past
        seq `after`: (seq, detail), through their own index."""
        return self._records_of(f"syscall = '{CONTROL_RECORD}'", after)

    def answer_records(self, after: int) -> list[tuple[int, Any]]:
        """The chain's records of answers to approval requests (`approval.answer`: applied,
        or refused), past seq `after`: (seq, phase, detail), through their own index."""
        return self._records_of("syscall = 'approval.answer'", after, phase=True)

    def cancel_records(self, after: int, *, whole: bool = False) -> list[tuple[int, Any]]:
        """The chain's `admin` records past seq `after` that may be a request's cancellation
        (detail `{"request", "state": "cancelled"}`): (seq, detail), through their own index
        (`audit_admin`). Only those that say `cancelled` are parsed and kept: the host's other
        acts, three or so a process (its spawn, its end), are most of them (red team 26: 200,000
        read whole at the first look after a start, 2-6 s and ~250 MiB). `whole`: past the
        head this store found too (a front end's reader, whose head never moves)."""
        return self._records_of("phase = 'admin' AND detail LIKE '%cancelled%'", after,
                                whole=whole)

    def expiry_records(self, after: int, *, whole: bool = False) -> list[tuple[int, Any]]:
        """The chain's `denied` records past seq `after` that may be a request's expiry
        (detail `{"request", "state": "expired"}`): (seq, detail), through their own index
        (`audit_expired`), as `cancel_records`. Only those whose detail starts as an expiry's
        does (`{"request": ..., "state": "expired"`) are read: a tool's refused call is a
        `denied` record too, whose arguments it writes (red team 31: 100,000 of them, each
        saying `expired`, were parsed at every `libos approvals`, 2.5 s and 180 MiB)."""
        return self._records_of(f"phase = 'denied' AND detail LIKE '%expired%' AND {_EXPIRY}",
                                after, whole=whole)

    def run_end(self, start: int) -> int:
        """The last seq of the run of records from `start` + 1 on with no gap between them
        (`start` if there is no record `start` + 1): a front end's whole-chain reader marks
        no further, so a database writer's record kept far past the chain's end moves no mark
        past the seqs the broker appends next (red team 35)."""
        if not self._query("SELECT seq FROM audit WHERE seq = ?", (start + 1,)):
            return start
        rows = self._query("SELECT seq FROM audit AS a WHERE seq > ? AND NOT EXISTS (SELECT 1"
                           " FROM audit AS b WHERE b.seq = a.seq + 1) ORDER BY seq LIMIT 1",
                           (start,))
        return int(rows[0]["seq"])

    @property
    def linked_seq(self) -> int:
        """The seq of the newest record this writer's chain follows (appended, or found at
        opening): a mark of how far the chain's records were read never moves past it (red
        team 26: a writer's row far past the head, read, then deleted, left the mark there,
        and the records appended since unread). A row past it is read again at the next look."""
        return int(self._head[0])  # type: ignore[attr-defined]

    def _records_of(self, where: str, after: int, *, phase: bool = False,
                    whole: bool = False) -> list[Any]:
        # (`where` a literal, one of ours: a partial index is used only so). One writer's
        # chain has nothing past its head but a database writer's rows: never read.
        shared = whole or self._shared  # type: ignore[attr-defined]
        rows = self._query(f"SELECT seq, phase, syscall, detail FROM audit WHERE {where}"
                           " AND seq > ?" + ("" if shared else " AND seq <= ?") + " ORDER BY seq",
                           (after,) if shared else (after, self.linked_seq))
        found: list[Any] = []
        for row in rows:
            try:  # (a row anyone who writes the database may write: a record edited)
                detail = read_json(row["detail"], f"a {row['syscall']} record")
            except Unreadable:
                continue
            found.append((int(row["seq"]), row["phase"], detail) if phase
                         else (int(row["seq"]), detail))
        return found

    @staticmethod
    def _trim_controls(db: Any, now: float) -> None:
        """Done requests go after KEEP_DONE_FOR seconds, or sooner beyond the newest
        KEEP_DONE of them: never one done in the last KEEP_RECENT seconds (its command may not
        have looked yet), nor one taken but not yet answered (its broker writes what applying
        it gave: `finish_control`; after the hour, that broker is taken to have died in it).
        Ages are by the clocks of the brokers that took them: one a minute or more ahead of
        another may trim its requests early."""
        db.execute("DELETE FROM control WHERE done < ?", (now - KEEP_DONE_FOR,))
        db.execute("DELETE FROM control WHERE done < ? AND result IS NOT NULL"
                   " AND id < (SELECT id FROM control WHERE done IS NOT NULL ORDER BY id DESC"
                   " LIMIT 1 OFFSET ?)", (now - KEEP_RECENT, KEEP_DONE))

    # -- recovery --------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO meta(key, value) VALUES (?,?) ON CONFLICT (key) DO UPDATE"
                       " SET value=excluded.value", (key, value))
