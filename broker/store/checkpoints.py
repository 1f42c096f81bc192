"""Checkpoints: the latest of each process (what recovery resumes from) and the log of those
kept to fork from.

Every checkpoint a process writes goes to `checkpoint_log`, with an id of its own; a process's
latest checkpoint (what recovery resumes from) is its row with the highest id. The log keeps
each process's latest `keep` (the kernel's retention setting, `ProcessLimits.checkpoints`; the
latest is always among them) and every checkpoint an image was committed from (pinned,
whatever its age); older ones are dropped as new ones come, so the log stays bounded per
process. (The latest was also copied to a table of its own, `checkpoints`, until schema
version 6: a row fewer to write at each of a step's two checkpoints.)

Dropping them (a DELETE, an index search) costs about what the checkpoint's own row does,
and a step writes two: so it is done once every `TRIM_EVERY` checkpoints of a process, and at
its first in this store (`_trims_due`), unless the process was made by this store (it has
none to drop: `_process_inserted`). On disk a process has at most
`keep + TRIM_EVERY - 1` unpinned checkpoints; what is read (`checkpoint_log`,
`logged_checkpoint`) is exactly the latest `keep` and the pinned ones, as if each write
dropped the rest.

A mixin of `SQLiteStore` (see `broker.store.connection`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.store.connection import Connected, Db, Row
from broker.store.json_column import Unreadable, read_json

DEFAULT_KEEP = 16
TRIM_EVERY = 8  # checkpoints of a process between two drops of the old ones
# Processes whose checkpoints are counted; past it, counting starts over (and each process
# drops its old ones at its next checkpoint: a DELETE each, at 10,000 processes 38,446).
_MAX_COUNTED = 65_536

_LOG = "INSERT INTO checkpoint_log(pid, step, state, created) VALUES (?,?,?,?)"
# The id past which a process's checkpoints are kept (its `keep`-th newest is not): NULL if
# it has `keep` or fewer.
_BOUND = "(SELECT id FROM checkpoint_log WHERE pid=? ORDER BY id DESC LIMIT 1 OFFSET ?)"
_RETAIN = f"DELETE FROM checkpoint_log WHERE pid=? AND pinned=0 AND id<={_BOUND}"
_KEPT = f"(pinned=1 OR id>COALESCE({_BOUND}, 0))"  # what the retention keeps (params: pid, keep)
_NOTED = "SELECT value FROM meta WHERE key='checkpoint_retention'"  # the writer's retention
_NOTE = ("INSERT INTO meta(key, value) VALUES ('checkpoint_retention', ?) ON CONFLICT (key)"
         " DO UPDATE SET value=excluded.value")


@dataclass(slots=True)
class Checkpoint:
    """A checkpoint to write, serialised: the observation that ended its step (step, action,
    result, error) and the planner turns changed (None: dropped) go with it."""

    pid: int
    step: int
    state: str
    observation: tuple[int, str, str, str | None] | None
    turns: list[tuple[int, str | None]]


@dataclass(slots=True)
class CheckpointBatch:
    """Deferred checkpoints written by one deferred write (`Connected.defer`), together: more
    join it until a transaction runs it (`ran`; a rolled-back one runs again whole)."""

    write: Callable[[Db, list[Checkpoint]], None]
    items: list[Checkpoint]
    ran: bool = field(default=False)

    def __call__(self, db: Db) -> None:
        self.ran = True
        self.write(db, self.items)

    @property
    def pids(self) -> list[int]:
        """The processes whose checkpoints these are (told if the store refuses them)."""
        return [item.pid for item in self.items]


class CheckpointLog(Connected):
    _keep_checkpoints: int = DEFAULT_KEEP
    _keep_set: int | None = None  # set by `set_checkpoint_retention`
    # Per process: its checkpoints logged since the old ones were last dropped, in this store.
    # A process not in it has them dropped at its next (at its first, after a restart).
    _untrimmed: dict[int, int] | None = None

    def _trims_due(self, counts: dict[int, int]) -> list[int]:
        """Of the processes logging `counts[pid]` checkpoints now (in one transaction), those
        whose old ones are dropped in it too (`TRIM_EVERY`)."""
        untrimmed = self._untrimmed
        if untrimmed is None or len(untrimmed) > _MAX_COUNTED:
            untrimmed = self._untrimmed = {}
        due = []
        for pid, count in counts.items():
            since = untrimmed.get(pid)
            if since is None or since + count >= TRIM_EVERY:
                due.append(pid)
                untrimmed[pid] = 0
            else:
                untrimmed[pid] = since + count
        return due

    def _process_inserted(self, pid: int) -> None:
        """A process made in this transaction has no checkpoint to drop at its first (a pid is
        never used again: no process row is deleted). A rollback forgets it (`_rolled_back`)."""
        if self._untrimmed is None:
            self._untrimmed = {}
        self._untrimmed[pid] = 0
        super()._process_inserted(pid)

    def _rolled_back(self) -> None:
        """A transaction that dropped old checkpoints may have been rolled back: each process
        drops them at its next checkpoint, as at its first."""
        self._untrimmed = None
        super()._rolled_back()

    def set_checkpoint_retention(self, keep: int) -> None:
        """Keep each process's latest `keep` checkpoints (at least 1) to fork from. A writer
        notes it in the store, for what reads the log without setting one (`_read_keep`)."""
        if type(keep) is not int or keep < 1:
            raise ValueError(f"checkpoint retention must be a positive int, not {keep!r}")
        self._keep_checkpoints = self._keep_set = keep
        noted = self._query(_NOTED) if self._lock_fd is not None else None
        if noted is not None and (not noted or noted[0][0] != str(keep)):
            with self.transaction() as db:
                db.execute(_NOTE, (str(keep),))

    def _read_keep(self) -> int:
        """The retention reads filter by: the one set here, or a writer's own (what it drops),
        else the one the store's writer noted (a command's store, `libos checkpoints`: the
        old ones on disk are the broker's to drop, not to be shown, and past the default it
        keeps more than the default)."""
        if self._keep_set is not None:
            return self._keep_set
        if self._lock_fd is not None:
            return self._keep_checkpoints
        noted = self._query(_NOTED)
        value = str(noted[0][0]) if noted else ""
        return (int(value) if value.isascii() and value.isdigit() and int(value) > 0
                else DEFAULT_KEEP)  # (ASCII digits only: `int` refuses a superscript two)

    def _write_checkpoints(self, db: Db, checkpoints: list[Checkpoint]) -> None:
        """Inside a transaction: checkpoints in the order saved, each with its observation and
        planner turns, each logged (the latest of each process is its last here), and the
        log's retention applied once per process."""
        for c in checkpoints:
            if c.turns:  # a turn's new content, or None for a turn dropped
                db.executemany("INSERT INTO planner_turns(pid, n, turn) VALUES (?,?,?) ON"
                               " CONFLICT (pid, n) DO UPDATE SET turn=excluded.turn",
                               [(c.pid, n, t) for n, t in c.turns if t is not None])
                db.executemany("DELETE FROM planner_turns WHERE pid=? AND n=?",
                               [(c.pid, n) for n, t in c.turns if t is None])
        observations = [(c.pid, *c.observation) for c in checkpoints if c.observation]
        if observations:
            db.executemany(
                "INSERT INTO observations(pid, step, action, result, error) VALUES"
                " (?,?,?,?,?) ON CONFLICT (pid, step) DO UPDATE SET action=excluded.action,"
                " result=excluded.result, error=excluded.error", observations)
        now = self._now()
        db.executemany(_LOG, [(c.pid, c.step, c.state, now) for c in checkpoints])
        counts: dict[int, int] = {}
        for c in checkpoints:
            counts[c.pid] = counts.get(c.pid, 0) + 1
        due = self._trims_due(counts)
        if due:
            keep = self._keep_checkpoints
            db.executemany(_RETAIN, [(pid, pid, keep) for pid in due])

    def _write_checkpoint(self, db: Db, pid: int, step: int, state: str) -> int:
        """`_put_checkpoint`, and the id it was logged with (reading it waits for the server,
        in the middle of a PostgreSQL transaction's batch)."""
        checkpoint_id = self._put_checkpoint(db, pid, step, state, with_id=True)
        assert checkpoint_id is not None
        return checkpoint_id

    def _put_checkpoint(self, db: Db, pid: int, step: int, state: str, *,
                        with_id: bool = False) -> int | None:
        """Inside a transaction: the process's latest checkpoint, logged; the log's oldest
        unpinned entries beyond the retention dropped."""
        now = self._now()
        checkpoint_id = None
        if with_id:
            checkpoint_id = int(db.execute(f"{_LOG} RETURNING id",
                                           (pid, step, state, now)).fetchone()[0])
        else:
            db.execute(_LOG, (pid, step, state, now))
        if self._trims_due({pid: 1}):
            db.execute(_RETAIN, (pid, pid, self._keep_checkpoints))
        return checkpoint_id

    def logged_checkpoint(self, pid: int, checkpoint_id: int) -> dict[str, Any] | None:
        """A kept checkpoint of process `pid` (None if it is not one, or was dropped)."""
        rows = self._query("SELECT id, step, state, created FROM checkpoint_log WHERE id=? AND"
                           f" pid=? AND {_KEPT}", (checkpoint_id, pid, pid, self._read_keep()))
        return _checkpoint(rows[0]) if rows else None

    def checkpoint_log(self, pid: int) -> list[dict[str, Any]]:
        """The checkpoints kept of process `pid`, oldest first."""
        return [_checkpoint(r) for r in self._query(
            f"SELECT id, step, state, created, pinned FROM checkpoint_log WHERE pid=? AND"
            f" {_KEPT} ORDER BY id", (pid, pid, self._read_keep()))]

    def pin_checkpoint(self, checkpoint_id: int) -> None:
        """Keep this checkpoint whatever the retention (an image was made from it)."""
        with self.transaction() as db:
            db.execute("UPDATE checkpoint_log SET pinned=1 WHERE id=?", (checkpoint_id,))


def summary(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A kept checkpoint as people and the embedding API see it: where it stands (step, image,
    cwd), whether a step was in flight (the tool it was about to call), and if it is pinned."""
    state = checkpoint["state"]
    image = state.get("image")
    pending = state.get("pending")
    return {"id": checkpoint["id"], "step": checkpoint["step"],
            "created": checkpoint["created"], "pinned": checkpoint.get("pinned", False),
            "image": f"{image[0]}:{image[1]}" if isinstance(image, list) else None,
            "cwd": state.get("cwd"),
            "pending": pending.get("tool") if isinstance(pending, dict) else None}


def _checkpoint(row: Row) -> dict[str, Any]:
    out = {"id": row["id"], "step": row["step"],
           "state": read_state(row["state"], f"checkpoint {row['id']}'s state"),
           "created": row["created"]}
    if "pinned" in row.keys():  # noqa: SIM118 (a Row is no mapping)
        out["pinned"] = bool(row["pinned"])
    return out


# What recovery reads of a checkpoint's state, each of the type `recovery.capture` writes it
# as. A field may be absent (a store's own tests and older brokers write fewer): recovery
# reads those with a default.
_FIELDS = {"cwd": str, "usage": dict, "pending": (dict, type(None)),
           "exit_request": (list, type(None)), "pause_requested": bool, "history_from": int,
           "labels": list, "audit_from": int}


def read_state(text: str, what: str) -> dict[str, Any]:
    """A checkpoint's state, its fields of the types recovery takes them as; `Unreadable`
    for one edited into another shape (it would stop the recovery of every process)."""
    state = read_json(text, what)
    wrong = [k for k, kind in _FIELDS.items() if k in state and not isinstance(state[k], kind)]
    usage, pending, asked = state.get("usage"), state.get("pending"), state.get("exit_request")
    if isinstance(usage, dict) and not all(
            type(v) is int and not k.startswith("_") for k, v in usage.items()):
        wrong.append("usage")
    # A step as its planner chose it (`action_to_json`): a `tool`, of any JSON type (a
    # planner's `CallTool(7)` is checkpointed before the dispatcher refuses it: red team 29).
    if isinstance(pending, dict) and "tool" not in pending:
        wrong.append("pending")
    if isinstance(asked, list) and not (len(asked) == 2 and type(asked[0]) is int):
        wrong.append("exit_request")
    if not all(isinstance(label, str) for label in state.get("labels") or ()):
        wrong.append("labels")
    if wrong:
        raise Unreadable(f"{what} cannot be read back (its {', '.join(wrong)} not as a"
                         " checkpoint holds it): edited in the database")
    return state
