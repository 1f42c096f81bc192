"""The connection every table module of the SQLite store shares.

All access goes through one connection under a lock, because wasm tools answer cheap
syscalls from a worker thread. `SQLiteStore` (see `broker.store.sqlite`) opens it; the
modules beside this one (the audit chain, approvals, processes, objects, tools, durable
state) are mixins that reach it only through `transaction()` and `_query()`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from broker.errors import Conflict


def dump_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Connected:
    """What `SQLiteStore.__init__` sets up, and the primitives every table module uses."""

    path: str
    _now: Callable[[], float]
    _lock: threading.RLock
    _lock_fd: int | None
    _db: sqlite3.Connection

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

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

