"""The WAL checkpointed on a thread of its own, not inside the broker's commits.

SQLite in WAL mode copies the log back into the database file (a checkpoint) from inside the
commit that takes the log past `wal_autocheckpoint` pages: that commit then reads the log,
writes the pages and waits for two `fdatasync`s, all on the trio thread, where every process
waits for it. With the scheduler's group commit that was one commit in about twenty, each
waiting milliseconds on the disk (29 `fdatasync`s in 10,000 steps of 100 processes, 5.8 ms
each on this VM, beside 2.4 s of work).

Here a thread with a connection of its own runs a PASSIVE checkpoint every `EVERY` seconds
(SQLite's own checkpoint, only from another connection: it never blocks the writer, and the
GIL is let go while it reads, writes and syncs). The writer's automatic checkpoint stays on
at `FALLBACK_PAGES` (10x SQLite's default) so the log stays bounded if this thread falls
behind. Durability is SQLite's either way: a commit is durable once it is in the log, and a
checkpoint killed half-way is finished by the next connection to open the file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("libos.store")

EVERY = 0.1  # seconds between two checkpoints (about what 1,000 pages take a busy broker)
FALLBACK_PAGES = 10_000  # the writer's own automatic checkpoint, if this thread lags


class WalCheckpointer:
    """A daemon thread checkpointing `path`'s WAL until `stop` (which joins it)."""

    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # The writer's: a checkpoint's syncs are skipped with OFF (benchmarks) as its are.
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="libos-wal-checkpoint",
                                        daemon=True)
        try:
            self._thread.start()
        except RuntimeError:  # (no thread to be had: its connection is not left open)
            self._db.close()
            raise

    def _run(self) -> None:
        try:
            while not self._stopping.wait(EVERY):
                try:
                    self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # (busy, a full disk: the next one tries again,
                    log.debug("WAL checkpoint failed: %s", exc)  # the writer's is the bound)
        finally:
            self._db.close()

    def stop(self, *, wait: bool = True) -> None:
        """Ends the thread and its connection (before the writer closes: the last connection
        to close checkpoints the whole log and removes it, as it always did); without
        `wait`, the thread ends within `EVERY` seconds."""
        self._stopping.set()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()
