"""The rooted fs provider's directory descriptors, held for one `with` block, and the host's
errors as libos errors.

Small classes, not `@contextmanager` generators: a read where openat2 is missing holds two
(its check's `identify` and its open), and a generator's frame, its `next` and `throw` and
the wrapper object cost about 6% of a whole audited read's instructions. Each closes its
descriptor on every way out of the block, as the generators' `finally` did.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from types import TracebackType

from broker.caps import CheckedPath, require_proof
from broker.errors import Conflict, InvalidArgument, LibosError, LimitExceeded, NotCapable, NotFound

# Opens the directory `parts` names beneath the root, with no symlink on the way; the caller
# closes what it returns.
DirOpener = Callable[[tuple[str, ...]], int]


def os_error(exc: OSError, what: str) -> LibosError:
    code = exc.errno
    if code == errno.ENOENT:
        return NotFound(f"{what}: no such file or directory")
    if code in (errno.ELOOP, errno.EMLINK):
        return Conflict(f"{what}: a symlink appeared on the path after it was checked")
    if code == errno.EXDEV:  # openat2: a way out of the root (never on a checked path)
        return NotCapable(f"{what}: leads out of the root")
    if code == errno.EAGAIN:  # openat2: the tree kept moving; or a lease held elsewhere
        return Conflict(f"{what}: the path changed, or another holds the file, while it was "
                        "opened")
    if code == errno.EEXIST:
        return Conflict(f"{what}: already exists")
    if code == errno.ENOTEMPTY:
        return Conflict(f"{what}: directory not empty")
    if code in (errno.ENOTDIR, errno.EISDIR):
        return InvalidArgument(f"{what}: {os.strerror(code)}")
    if code in (errno.EACCES, errno.EPERM):
        return NotCapable(f"{what}: the host refused access")
    if code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EMFILE, errno.ENFILE,
                errno.ENOMEM):  # (the host's limits, not the caller's argument)
        return LimitExceeded(f"{what}: {os.strerror(code)}")
    return InvalidArgument(f"{what}: {os.strerror(code or 0)}")


class OpenDir:
    """`with OpenDir(opener, parts) as fd`: the directory's descriptor, for the block."""

    __slots__ = ("_fd", "_open", "_parts")

    def __init__(self, opener: DirOpener, parts: tuple[str, ...]) -> None:
        self._open, self._parts = opener, parts

    def __enter__(self) -> int:
        self._fd = self._open(self._parts)
        return self._fd

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        os.close(self._fd)


class AtParent:
    """`with AtParent(opener, checked, what) as (dfd, name)`: the descriptor of a checked
    path's parent directory and its last component, for the block. An `OSError`, from the
    open or from the block, comes out as the libos error it means (`os_error`)."""

    __slots__ = ("_checked", "_fd", "_open", "_path", "_what")

    def __init__(self, opener: DirOpener, checked: object, what: str) -> None:
        self._open, self._checked, self._what = opener, checked, what

    def __enter__(self) -> tuple[int, str]:
        path = self._path = require_proof(self._checked, CheckedPath)
        if not path.parts:
            raise InvalidArgument(f"{self._what}: not allowed on the root itself")
        try:
            self._fd = self._open(path.parts[:-1])
        except OSError as exc:
            raise os_error(exc, path.resource) from None
        return self._fd, path.parts[-1]

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            os.close(self._fd)
        except OSError as failed:
            raise os_error(failed, self._path.resource) from None
        if isinstance(exc, OSError):
            raise os_error(exc, self._path.resource) from None
