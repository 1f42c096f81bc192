"""Is this file a libos store? Asked before opening one, without writing anything.

Opening a SQLite file the ordinary way writes to it: switching it to WAL, creating the
schema's tables, even a read-only open of a WAL database leaves `-wal` and `-shm` files
beside it. A reader (`libos ps`, `audit`, `approvals`, the web page) must leave a file that
is not already a libos store byte for byte as it was, so it looks first: at the header with
plain file reads, then at the tables through a connection that cannot write. A lock file a
broker made beside it marks a store, and then the file is not read at all (see below).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from broker.errors import InvalidArgument

SQLITE_HEADER = b"SQLite format 3\x00"
MARKER_TABLE = "meta"  # the first table the schema makes
LOCK_SUFFIX = ".lock"  # a writer's lock file (and the chain's anchor) beside the database


def _tables(path: Path, head: bytes) -> set[str]:
    uri = path.resolve().as_uri()
    # A WAL database that nobody has open is read as immutable, since a read-only open would
    # leave -wal and -shm files beside someone else's database.
    idle_wal = head[18:20] == b"\x02\x02" and not Path(str(path) + "-wal").exists()
    uri += "?mode=ro&immutable=1" if idle_wal else "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            rows = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise InvalidArgument(f"{path} is not a libos store: {exc}") from None
    return {name for (name,) in rows}


def check_store_file(path: str | Path, *, writer: bool) -> None:
    """Refuse (InvalidArgument, nothing written) a file that is not a libos store. A reader
    needs one that is; a writer may also start a store in a missing or empty file, or in an
    SQLite database with no tables yet, never in one that holds something else."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if size and Path(str(path) + LOCK_SUFFIX).exists():
            # A broker's lock file beside it: a store libos opened (only a store that passed
            # this check gets one), perhaps being written now, perhaps by this very process.
            # So the file is not read here: closing a descriptor of it would drop every POSIX
            # lock this process's SQLite connections hold on it, and another process's
            # connection, closing, would then delete the WAL under the writer (its later
            # commits lost at its crash). Nor is SQLite asked, so that no extra connection
            # comes and goes beside the broker's own. (Not a database: opening it says so.)
            return
        # (never waited on: a named pipe put in its place is no store, red team 12)
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            kind = os.fstat(f.fileno()).st_mode
            if stat.S_ISFIFO(kind) or stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                raise InvalidArgument(f"{path} is not a libos store (not a regular file)")
            head = f.read(100)  # the database header
    except FileNotFoundError:
        if writer:
            return
        raise InvalidArgument(f"no store at {path}") from None
    except OSError as exc:
        if writer:
            raise  # a path a broker cannot use (a file where a directory must be): as itself
        raise InvalidArgument(f"{path}: {exc.strerror}") from None
    if size == 0:
        if writer:
            return
        raise InvalidArgument(f"{path} is not a libos store (an empty file)")
    if not head.startswith(SQLITE_HEADER):
        raise InvalidArgument(f"{path} is not a libos store (not an SQLite database)")
    tables = _tables(path, head)
    if MARKER_TABLE in tables or (writer and not tables):
        return
    raise InvalidArgument(f"{path} is not a libos store (an SQLite database of something "
                          "else; libos leaves it as it is)")
