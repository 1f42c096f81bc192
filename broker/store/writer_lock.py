"""The writer's lock: an exclusive flock on the file beside a store (`<db>.lock`, the chain's
anchor too), one writer per store on this host.

A flock belongs to the open file description, and every child the broker starts shares it
from its fork until its exec (or for good, for a fork that never execs): a Deno spare that
trio's `open_process` forks in a worker thread, a shell command whose `preexec_fn` runs in
the child, the CLI's own fork. The descriptor is close-on-exec, yet a close in the broker
while such a child is between fork and exec left the lock held until the child got there
(a kernel reopened at once over the same store was refused: a few percent of reopens while
sandboxes start, more on a loaded machine). So the writer lets go with an explicit
`LOCK_UN`, which releases the lock for every copy of the descriptor, before it closes its
own. A broker that dies lets go as before: its children exec (or exit) soon after.

Only the process that took the lock unlocks it: a child the embedding program forked with the
store open (a worker, a `with` that unwinds in the child) that closes its copy would
otherwise let go of the lock of the broker that still writes, and let a second broker in.

A store dropped unclosed lets go of its lock when it is collected (`release_if_still_taken`,
from `broker.store.sqlite`), only if the descriptor is still the one it took.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import stat

from broker.errors import InvalidArgument

# Each lock's descriptor, with the pid of the process that took it (`release_writer_lock`),
# the number of the take and the file it is (`release_if_still_taken`).
_TAKEN_BY: dict[int, tuple[int, int, tuple[int, int]]] = {}
_TAKES = itertools.count(1)


def take_writer_lock(path: str) -> int | None:
    """The lock file at `path` (made if missing, 0600), opened close-on-exec and locked
    exclusively; None if another holder has it."""
    try:
        # Never followed: whoever writes the database's directory could link it to any file
        # of the broker's user (its audit key), which the anchor would be written over.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise InvalidArgument(f"{path}: the store's lock file is a symbolic link (put there "
                              "by someone else): remove it") from None
    try:
        _check_ours(fd, path)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    st = os.fstat(fd)
    _TAKEN_BY[fd] = (os.getpid(), next(_TAKES), (st.st_dev, st.st_ino))
    return fd


# What a lock file holds: nothing, or the anchor's head and signed anchor (`broker.store.anchor`:
# decimal seqs and lower-case hex, padded with spaces, the head's slot zeros until written).
_LOCK_BYTES = 640
_LOCK_TEXT = frozenset(b"0123456789abcdef \n\x00")


def _check_ours(fd: int, path: str) -> None:
    """InvalidArgument unless the file open at `fd` may be a lock file a broker made: a
    regular file (a named pipe put there made the anchor's read wait for good) holding
    nothing libos never writes there. The database path, resolved, may name a link out of
    its directory (58429d5), so `<file>.lock` may be a file of the user's (a project's
    `Cargo.lock`, `uv.lock`): it is not overwritten with the anchor (red team 12)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidArgument(f"{path}: the store's lock file is not a regular file (put "
                              "there by someone else): remove it")
    if st.st_size and (st.st_size > _LOCK_BYTES or not set(
            os.pread(fd, _LOCK_BYTES + 1, 0)) <= _LOCK_TEXT):
        raise InvalidArgument(f"{path}: not a lock file a libos broker made (it holds "
                              "something else): not opened, nor written; remove or move it")


def take_number(fd: int) -> int | None:
    """Which take of the lock descriptor `fd` is (None: not one taken here)."""
    taken = _TAKEN_BY.get(fd)
    return None if taken is None else taken[1]


def release_if_still_taken(fd: int, take: int | None) -> None:
    """`release_writer_lock`, only if `fd` is still the descriptor of that take: one closed
    behind its holder's back (a test's crash) may since be another store's, or any file's."""
    taken = _TAKEN_BY.get(fd)
    if take is None or taken is None or taken[1] != take:
        return
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or (st.st_dev, st.st_ino) != taken[2]:
        del _TAKEN_BY[fd]  # closed behind its back, the number now another file's (or none)
        return
    release_writer_lock(fd)


def release_writer_lock(fd: int) -> None:
    """Unlock (for every copy a child may hold: see the module), then close; in a forked
    child, only close its own copy."""
    try:
        taken = _TAKEN_BY.pop(fd, None)
        if taken is not None and taken[0] == os.getpid():
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
