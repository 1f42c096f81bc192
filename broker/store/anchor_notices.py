"""Shared mode (PostgreSQL): whether a peer published an anchor since this broker last read
the `anchors` table, without a query (`broker.store.peer_anchors` reads it only then).

Each broker's upsert of its anchor notifies the brokers in the same statement (`PUBLISH`:
the row and the notice commit together). This broker's own session listens on that
channel, so a notice committed before any of its queries reaches it with that query's
answer (the server sends it while the session is idle, or when its statement ends): no
round trip of its own. A session made again (its notices lost meanwhile), or the first
use, counts as a notice. Anyone may notify the channel: a notice only makes the next read
look (a query), never a break.
"""

from __future__ import annotations

from typing import Any

CHANNEL = "libos_anchors"
# An upsert of this writer's row, and a notice naming it (who published), at once.
PUBLISH = (
    "WITH up AS (INSERT INTO anchors(signer, seq, hash, key, signature, at) VALUES (?,?,?,?,?,?)"
    " ON CONFLICT (signer) DO UPDATE SET seq=excluded.seq, hash=excluded.hash, key=excluded.key,"
    f" signature=excluded.signature, at=excluded.at RETURNING signer) SELECT pg_notify('{CHANNEL}',"
    " signer) FROM up")


class AnchorNotices:
    """Called before and after a walk: did a peer's anchor notice come since the last call
    (or can this not be told)? `store`: a PostgreSQL store (its `_db` and `_lock`), `own`:
    this broker's identity (its own notices are not a peer's)."""

    def __init__(self, store: Any, own: str) -> None:
        self._store, self._own = store, own
        self._session: Any = None  # the session listening
        self._came = True

    def __call__(self) -> bool:
        with self._store._lock:  # (the notices come with a query: under this lock)
            db = self._store._db
            if db.raw is self._session and not db.raw.closed:
                came, self._came = self._came, False
                return came
            db.ready()  # (a broken session made again first)
            raw = db.raw
            raw.add_notify_handler(self._noted)
            db.execute(f"LISTEN {CHANNEL}")
            self._session, self._came = raw, False
            return True

    def _noted(self, notice: Any) -> None:
        if notice.channel == CHANNEL and notice.payload != self._own:
            self._came = True
