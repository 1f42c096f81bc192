"""Removing the walks `libos ps` kept (`broker.store.walk_memory`) of stores that are gone.

A walk is kept per store location, `<key dir>/walks/<sha256>`, and nothing else removes it:
every store a user ever ran `ps` on, a test's or a bench's temporary one too, left a file
(up to `MAX_KEPT` bytes) for good. At most once a day (`SWEEP_EVERY`, the time kept as the
mtime of `walks/.swept`), a `ps` about to keep a walk (`anchored_reads`) first removes from
that directory each file that is a walk this user's key MACed (so ours: nothing else is
touched) whose store's location (its directory resolved, as the walk's name has it: a link
to the directory removed leaves the store there) no longer names anything, or of an older
version (one this broker never reads).
A name that is not a walk's, a symbolic link (never followed), a file another key MACed,
or a walk whose store is still there is left as it is.

A `ps` reading a walk while it is removed reads it whole from the descriptor it opened; one
writing it moves a whole new file into place (`os.replace`). The file is removed only if
the name still holds the one checked (device and inode, just before the unlink): in the
instant between that check and the unlink, a walk just kept there for a store made again at
that location can still go, which costs that store's next `ps` a full walk, nothing more.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

from broker.store.keys import AuditKey
from broker.store.walk_memory import VERSION, read_kept, walks_dir

SWEEP_EVERY = 24 * 60 * 60  # seconds
_MARK = ".swept"
_WALK_NAME = re.compile(r"[0-9a-f]{64}")  # (`remembered.place`: a sha256's hex)


def sweep_when_due(key: AuditKey, now: float | None = None) -> list[str]:
    """`sweep`, if the last was `SWEEP_EVERY` ago or more (or never). A cache's upkeep:
    nothing here fails a `ps`."""
    where = walks_dir(key)
    now = time.time() if now is None else now
    try:
        if now - os.lstat(where / _MARK).st_mtime < SWEEP_EVERY:
            return []
    except FileNotFoundError:
        pass
    except OSError:
        return []
    try:
        mark = os.open(where / _MARK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                       0o600)
        try:
            os.utime(mark, (now, now))
        finally:
            os.close(mark)
    except OSError:  # (no walks kept yet, or a directory this user cannot write)
        return []
    return sweep(key)


def sweep(key: AuditKey) -> list[str]:
    """Remove the walks `key` MACed in its directory whose store is gone (or of an older
    version); the names removed."""
    where = walks_dir(key)
    try:
        names = [n for n in os.listdir(where) if _WALK_NAME.fullmatch(n)]
    except OSError:
        return []
    removed = []
    for name in names:
        if _remove_if_gone(key, where / name):
            removed.append(name)
    return removed


def _remove_if_gone(key: AuditKey, path: Path) -> bool:
    try:
        seen = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(seen.st_mode):  # (a link is not followed, nor removed)
        return False
    kept = read_kept(key, path, expect=seen)
    if kept is None or not _gone(kept):
        return False
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (seen.st_dev, seen.st_ino):
            return False  # (replaced since it was read: a walk just kept)
        os.unlink(path)
    except OSError:
        return False
    return True


def _gone(kept: dict[str, object]) -> bool:
    """Whether a walk this key MACed is of no use: an older version's (never read again),
    or one whose store's location names nothing now."""
    version = kept.get("version")
    if not isinstance(version, int) or version > VERSION:
        return False  # (a newer broker's: left to it)
    if version < VERSION:
        return True
    location = kept.get("location")
    if not isinstance(location, str):
        return False
    try:
        os.lstat(location)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, ValueError):  # (a directory not searchable now: it may be there)
        return False
    return False
