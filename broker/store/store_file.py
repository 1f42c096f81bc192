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
import stat
from pathlib import Path

from broker.errors import Conflict, InvalidArgument
from broker.store import anchor
from broker.store.writer_lock import release_writer_lock, take_writer_lock


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


def file_identity(file: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `file` now, None if there is none (a store to make)."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def file_lock_path(key_dir: Path, file: str, before: tuple[int, int] | None = None
                   ) -> str | None:
    """Where the writer of the database file SQLite has just opened as `file` takes its second
    lock: `<key dir>/writers/<device>-<inode>`, the same for every name of that file. The lock
    beside the file (`<file>.lock`) is per name, and a hard link resolves to itself: the
    database replaced by a hard link to another store of the user's, open now, was opened past
    that store's writer, under a lock file and a WAL of its own (red team 12). None if the key's
    directory cannot be written (a read-only secret: the lock beside the file alone, DESIGN §9).
    Not an flock on the database itself: the descriptor's close would drop every POSIX lock
    this process's SQLite connections hold on it (`broker.store.probe`)."""
    st = os.stat(file)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{file} was replaced while it was opened (not a regular file "
                              "now): not opened")
    if before is not None and (st.st_dev, st.st_ino) != before:  # (renamed over: red team 14)
        raise InvalidArgument(f"{file} was replaced while it was opened (another file has its "
                              "name now): not opened")
    writers = key_dir / "writers"
    try:
        writers.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError:
        return None
    return str(writers / f"{st.st_dev}-{st.st_ino}")


def take_over_moved_lock(named: str, beside: str, public: str) -> None:
    """Move the lock file a broker from before 58429d5 kept at the name given (`named`, the
    name's own link not followed) to its place beside the file resolved (`beside`), when none
    is there yet and it holds an anchor this key (`public`) signed: the first open after the
    upgrade of a store reached through a link of the user's own otherwise found no anchor and
    recorded it removed, a false alarm (red team 12). Taken first: a broker from before that
    still writes it is `Conflict`."""
    try:
        if named == beside or os.path.lexists(beside) or not stat.S_ISREG(
                os.lstat(named).st_mode):
            return
    except OSError:
        return
    old = take_writer_lock(named)
    if old is None:
        raise Conflict(f"another broker has {named} (the store's lock file before) open")
    try:
        signed = anchor.read(named)[1]
        if signed is None or signed.key != public or not signed.verifies():
            return
        data = os.pread(old, 4096, 0)
        try:
            fd = os.open(beside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # (made meanwhile: that one is taken as it is)
            return
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.unlink(named)
    finally:
        release_writer_lock(old)
