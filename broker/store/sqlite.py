"""The embedded store: one SQLite file in WAL mode.

Every write is its own committed transaction before the call returns, so what the kernel has
acknowledged survives `kill -9` of the broker (WAL with synchronous=NORMAL loses nothing on a
process crash; only a power cut can take the last commits).

One broker writes a store at a time: a writer holds an exclusive lock on `<db>.lock`, which
lets it keep the head of the audit chain in memory (one INSERT per record, no read-back).
The same file holds the chain's anchor (see `broker.store.anchor`). Readers (the CLI's
tables) open without the lock.

This module opens the file; the tables are kept by one mixin each, on the one connection
they share (`broker.store.connection`): the audit chain (`chain`), approvals (`approvals`),
images, processes, capabilities and events (`processes`), Object Memory (`objects`), tool
sources and registrations (`tools`), durable process state (`durable`), checkpoints
(`checkpoints`) and a process's image replaced in one transaction (`switch`).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from broker.errors import Conflict, InvalidArgument
from broker.store.approvals import ApprovalTables
from broker.store.audit import GENESIS
from broker.store.durable import add_missing_columns
from broker.store.objects import ObjectTables
from broker.store.probe import LOCK_SUFFIX, check_store_file
from broker.store.switch import ImageSwitch
from broker.store.tools import ToolTables

SCHEMA_VERSION = "1"
DURABILITY = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


class SQLiteStore(ApprovalTables, ToolTables, ObjectTables, ImageSwitch):
    """The store the kernel uses (see `broker.store.interface.Store`): one class, put together
    from one mixin per group of tables, all on one connection."""

    def __init__(self, path: str | Path, *, clock: Any = time.time, writer: bool = True,
                 durability: str = "normal") -> None:
        """`durability`: "normal" (the default: survives a crash of the broker), "full"
        (an fsync per commit: survives a power cut too), or "off" (benchmarks only)."""
        self.path = str(path)
        self._now = clock
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        check_store_file(path, writer=writer)  # before anything is written beside it
        if writer:
            self._lock_fd = os.open(self.path + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
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
