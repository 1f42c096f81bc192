"""The file an SQLite store is: its path resolved once (symbolic links, `..`), so that the
writer's lock file, its anchor and SQLite's `-wal` and `-shm` files are the ones beside the
file actually opened. A database path replaced by a link to another store (by whoever writes
its directory) otherwise opened that store under a lock file of its own: a second writer of
it, past its broker's lock (red team 9).

SQLite resolves the links of the name it is given too, when it opens it (the name it uses is
`PRAGMA database_list`'s): a name swapped for a link between this resolution and SQLite's
open is caught by comparing the two (`check_opened`).
"""

from __future__ import annotations

import os
import sqlite3

from broker.errors import InvalidArgument


def resolved(path: str) -> str:
    """The path of the file `path` names now, every link and `..` resolved."""
    return os.path.realpath(path)


def check_made_here(path: str, file: str) -> None:
    """InvalidArgument if `path` is a symbolic link (its own name, resolved to `file`) to no
    store: a missing or empty file. A link of the user's own to a store opens that store;
    whoever writes the database's directory could otherwise have the writer make a store (and
    its lock, its WAL) in any missing file of the user's elsewhere, every record the broker
    stores later written there (`~/.ssh/authorized_keys`: red team 12). Decided from the
    resolution made (`file`), not a second look that a swap could answer differently."""
    named = os.path.abspath(path)
    here = os.path.join(os.path.realpath(os.path.dirname(named)), os.path.basename(named))
    try:
        st = os.stat(file)
    except OSError:
        st = None
    made = st is not None and st.st_size > 0
    if not made and st is not None and st.st_nlink > 1:  # (a hard link resolves to itself)
        raise InvalidArgument(f"{path} is an empty file with other names (hard links): a new "
                              "store is not made in it")
    if here == file:
        return
    if not made:
        raise InvalidArgument(f"{path} is a symbolic link to {file}, where no store is: a new "
                              "store is not made through a link (make it at its own path)")


def check_opened(db: sqlite3.Connection, path: str) -> None:
    """InvalidArgument unless `db`'s main database is the file at `path` (resolved): the name
    was not replaced by a link to another file between its resolution and SQLite's open."""
    opened = next((row[2] for row in db.execute("PRAGMA database_list") if row[1] == "main"),
                  None)
    if opened != path:
        raise InvalidArgument(f"{path} was replaced while it was opened (SQLite opened "
                              f"{opened}): not opened")
