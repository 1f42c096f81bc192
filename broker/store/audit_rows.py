"""Audit rows committed together: what waits for a commit (`Connected.defer`) and new
records, in one INSERT of many rows. One statement is atomic on its own, so no BEGIN and
COMMIT are sent around it: all the rows are durable once it returns, or none is. And what
an audit row's columns hold (`check_columns`), checked before a record is chained."""

from __future__ import annotations

import json
import math
from contextlib import suppress
from itertools import chain
from typing import Any

from broker.errors import InvalidArgument
from broker.store.audit import INT64, UNKNOWN_SYSCALL, AuditRecord, StoredRecord
from broker.store.connection import Connected, Db, Row

AUDIT_COLUMNS = ("seq, ts, pid, inv, tool, phase, syscall, resource, args_hash, cap_id, detail,"
                  " prev_hash, hash")
_ROW_VALUES = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
INSERT_AUDIT = f"INSERT INTO audit({AUDIT_COLUMNS}, payload) VALUES {_ROW_VALUES}"
# A writer that signs (`recordsig.start_signing`): a vouching record's signature beside it
# (`broker.store.recordsig`), NULL in every other row.
_SIGNED_VALUES = f"{_ROW_VALUES[:-1]},?)"
INSERT_SIGNED = f"INSERT INTO audit({AUDIT_COLUMNS}, payload, sig) VALUES {_SIGNED_VALUES}"
# Past this many rows (14 parameters each), a transaction of `executemany` carries them.
MAX_ROWS_AT_ONCE = 16
_flat = chain.from_iterable
_TEXT = (str, type(None))  # what an optional text column holds
_INSERT_ROWS = {n: INSERT_AUDIT + f",{_ROW_VALUES}" * (n - 1)
                for n in range(1, MAX_ROWS_AT_ONCE + 1)}
_INSERT_SIGNED_ROWS = {n: INSERT_SIGNED + f",{_SIGNED_VALUES}" * (n - 1)
                       for n in range(1, MAX_ROWS_AT_ONCE + 1)}


class RowsAtOnce(Connected):
    _anchor_due: tuple[int, str] | None = None  # the newest deferred head in the transaction
    # The backend's `execute` of a cursor kept for these INSERTs, where it has one (SQLite:
    # `Connection.execute` makes and drops a cursor each time, about a microsecond of each
    # commit, and a commit is made for every call); else the connection's.
    _appends: Any = None
    # Its rows carry a signature column (`INSERT_SIGNED`; `recordsig.start_signing` says).
    _signs = False

    @property
    def insert_audit(self) -> str:
        """The INSERT of a row `AuditChain._chain_row` makes (with the signature column when
        this writer signs)."""
        return INSERT_SIGNED if self._signs else INSERT_AUDIT

    def _insert_at_once(self, rows: list[tuple[Any, ...]]) -> bool:
        """Commit `rows` (chained after every record that waits) with the audit rows waiting
        for a commit, in one INSERT: atomic, and durable once it returns. False (nothing
        done) when something else waits too (a checkpoint: a transaction carries it), or too
        many rows. The caller checked that it may (`AuditChain._can_defer`) and moves the
        chain's head after."""
        waiting = self._deferred or []
        if waiting:
            if not all(type(w) is AuditRows for w in waiting):
                return False
            rows = [row for w in waiting for row in w.rows] + rows  # type: ignore[attr-defined]
        sql = (_INSERT_SIGNED_ROWS if self._signs else _INSERT_ROWS).get(len(rows))
        if sql is None:
            return False
        self._deferred = None
        try:
            (self._appends or self._db.execute)(sql, list(_flat(rows)))  # (a third of a
            # comprehension's cost)
        except BaseException as exc:
            if not self._went_through(exc, len(waiting), (rows[-1][0], rows[-1][12])):
                self._deferred = [*waiting, *(self._deferred or ())]  # they wait for the next
                self._rolled_back()
                raise
        self._committed_total += len(waiting)
        return True


class AuditRows:
    """A deferred write of audit rows (`AuditChain._defer_rows`): run by the transaction that
    carries it, or merged with others into one INSERT (`RowsAtOnce._insert_at_once`)."""

    __slots__ = ("chain", "head", "rows")
    # Never set aside (`Connected._set_aside_refused`): the chain after it links to it. Its
    # values are checked before it is chained (`check_columns`).
    droppable = False

    def __init__(self, chain: RowsAtOnce, rows: list[tuple[Any, ...]], head: tuple[int, str]
                 ) -> None:
        self.chain, self.rows, self.head = chain, rows, head

    def __call__(self, db: Db) -> None:
        db.executemany(self.chain.insert_audit, self.rows)
        self.chain._anchor_due = self.head


def check_columns(record: AuditRecord) -> None:
    """`InvalidArgument` for a record a store cannot hold as it is hashed, before it is
    chained: chained, it is never set aside (the records after it link to it), so it would
    wait in front of every later commit, each failing on it. Its integer
    columns (`pid`, `inv`) hold a 64-bit int or None: a store refuses one past 64 bits, and
    keeps a bool, a float or a number as text as another value than the one hashed (the
    record would verify as edited); `phase` and `syscall` hold text, its other text columns
    text or None. (A record of the broker's own shape passes `record_hash`'s quick test,
    which calls this for the others only.)"""
    pid, inv = record.pid, record.inv
    if not ((pid is None or (type(pid) is int and pid in INT64))
            and (inv is None or (type(inv) is int and inv in INT64))
            and isinstance(record.phase, str) and isinstance(record.syscall, str)
            and isinstance(record.tool, _TEXT) and isinstance(record.resource, _TEXT)
            and isinstance(record.args_hash, _TEXT) and isinstance(record.cap_id, _TEXT)):
        raise InvalidArgument(f"the store cannot hold this value: {_misfit(record)} in an"
                              " audit record")


def record_time(ts: Any) -> float:
    """A record's `ts` as its store keeps it (a float column), before it is hashed: a clock
    may give an int (`FakeClock(start=0)`), kept as a float, so hashed as one (else every
    record verifies as edited). `InvalidArgument` for a time no store keeps as it is hashed
    (NaN, which SQLite keeps as NULL and refuses: chained, it would wait in front of every
    later commit; infinity; text; past a float), before it is chained."""
    if type(ts) is not float and isinstance(ts, int | float):
        with suppress(OverflowError):  # (an int past a float: refused below)
            ts = float(ts)
    if type(ts) is float and math.isfinite(ts):
        return ts
    raise InvalidArgument(f"the store cannot hold this value: a time that is no finite number"
                          f" ({type(ts).__name__}, from the broker's clock) in an audit record")


def check_no_nul(record: AuditRecord) -> None:
    """`InvalidArgument` for a record with a NUL in a text column (PostgreSQL refuses one)."""
    if any(type(text) is str and "\x00" in text for text in (
            record.tool, record.phase, record.syscall, record.resource, record.args_hash,
            record.cap_id)):
        raise InvalidArgument("the store cannot hold this value: text with a NUL character"
                              " in an audit record's field")


def _misfit(record: AuditRecord) -> str:
    """Which of `record`'s columns `check_columns` refuses, and what it holds."""
    for name in ("pid", "inv"):
        value = getattr(record, name)
        if value is not None and not (type(value) is int and value in INT64):
            shown = "an integer past 64 bits" if type(value) is int else type(value).__name__
            return f"{name} {shown} (not a 64-bit integer)"
    for name in ("phase", "syscall", "tool", "resource", "args_hash", "cap_id"):
        value = getattr(record, name)
        if not isinstance(value, str) and (value is not None or name in ("phase", "syscall")):
            return f"{name} {type(value).__name__} (not text)"
    return "a column"


def detail_of(text: Any) -> dict[str, Any]:
    """A record's detail as read from its row's text; {} for one edited into something
    unreadable (not JSON, nested past what the parser can, not an object), which its hash
    check reports: every open's links walk and recovery read such records."""
    try:
        detail = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        return {}
    return detail if isinstance(detail, dict) else {}


def stored_record(r: Row, sig: str | None = None) -> StoredRecord:
    """A record as read from its row (`sig`: its signature, where it was read)."""
    record = AuditRecord(
        phase=r["phase"], syscall=r["syscall"], pid=r["pid"], inv=r["inv"], tool=r["tool"],
        resource=r["resource"], args_hash=r["args_hash"], cap_id=r["cap_id"],
        detail=detail_of(r["detail"]))
    return StoredRecord(r["seq"], r["ts"], record, r["detail"], r["prev_hash"], r["hash"], sig)


def closing(row: Row, detail: dict[str, Any]) -> AuditRecord:
    """The outcome record that closes the intent read as `row`, naming what its intent names:
    each column as it is, or, of a type the broker never writes there (a database writer's,
    in SQLite's untyped columns: an `inv` of text, a `syscall` of bytes), None (`syscall`:
    `unknown`). Copied as it is, `check_columns` refused it and stopped the open."""
    pid, inv, syscall = row["pid"], row["inv"], row["syscall"]
    return AuditRecord(
        phase="outcome", syscall=syscall if type(syscall) is str else UNKNOWN_SYSCALL,
        pid=pid if type(pid) is int and pid in INT64 else None,
        inv=inv if type(inv) is int and inv in INT64 else None,
        tool=_text(row["tool"]), resource=_text(row["resource"]),
        args_hash=_text(row["args_hash"]), detail=detail)


def _text(value: Any) -> str | None:
    return value if type(value) is str else None


def seq_in(detail: dict[str, Any], key: str) -> int | None:
    """`detail[key]` if it is a seq (an int), else None: a record's detail holds whatever a
    database writer made it (a list there, used as a key, raised `TypeError`)."""
    value = detail.get(key)
    return value if type(value) is int else None
