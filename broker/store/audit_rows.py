"""Audit rows committed together: what waits for a commit (`Connected.defer`) and new
records, in one INSERT of many rows. One statement is atomic on its own, so no BEGIN and
COMMIT are sent around it: all the rows are durable once it returns, or none is."""

from __future__ import annotations

from itertools import chain
from typing import Any

from broker.store.connection import Connected, Db

AUDIT_COLUMNS = ("seq, ts, pid, inv, tool, phase, syscall, resource, args_hash, cap_id, detail,"
                  " prev_hash, hash")
_ROW_VALUES = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
INSERT_AUDIT = f"INSERT INTO audit({AUDIT_COLUMNS}, payload) VALUES {_ROW_VALUES}"
# Past this many rows (14 parameters each), a transaction of `executemany` carries them.
MAX_ROWS_AT_ONCE = 16
_flat = chain.from_iterable
_INSERT_ROWS = {n: INSERT_AUDIT + f",{_ROW_VALUES}" * (n - 1)
                for n in range(1, MAX_ROWS_AT_ONCE + 1)}


class RowsAtOnce(Connected):
    _anchor_due: tuple[int, str] | None = None  # the newest deferred head in the transaction

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
        sql = _INSERT_ROWS.get(len(rows))
        if sql is None:
            return False
        self._deferred = None
        try:
            self._db.execute(sql, list(_flat(rows)))  # (a third of a comprehension's cost)
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
    # values are checked before it is chained (`AuditChain.check_storable`).
    droppable = False

    def __init__(self, chain: RowsAtOnce, rows: list[tuple[Any, ...]], head: tuple[int, str]
                 ) -> None:
        self.chain, self.rows, self.head = chain, rows, head

    def __call__(self, db: Db) -> None:
        db.executemany(INSERT_AUDIT, self.rows)
        self.chain._anchor_due = self.head
