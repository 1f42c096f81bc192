"""Reopen an O_PATH descriptor as the very inode it refers to, through procfs.

An O_PATH open opens nothing: a FIFO's other end is not woken, a device's driver never sees
an open (no tape rewinds, no terminal becomes the broker's). So the rooted provider opens a
checked file that way first, looks at it (fstat), and only a regular file is then opened for
reading or writing, by opening the descriptor's magic link in /proc/self/fd: that yields the
same inode, whatever the name leads to by then (what runc and libpathrs do; Linux has no
other way to turn an O_PATH descriptor into an open one). The directory is used only if it is
truly procfs (fstatfs says PROC_SUPER_MAGIC) and serves this process (a reopen of its own
descriptor gives back the same inode); it is pinned once per process, and again in a forked
child, whose /proc/self is another process's. Where it is not, `fd_dir()` is None and the
provider reopens by name and compares.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import threading

PROC_SUPER_MAGIC = 0x9FA0
_REOPEN_FLAGS = os.O_CLOEXEC | os.O_NOCTTY  # never O_NOFOLLOW: the magic link is followed

_lock = threading.Lock()
_pinned: int | None = None  # this process's /proc/self/fd, O_PATH; -1: not usable here
_fstatfs = None


def _fs_type(fd: int) -> int | None:
    """statfs's f_type of what `fd` refers to (the first word of `struct statfs`)."""
    global _fstatfs
    if _fstatfs is None:
        libc = ctypes.CDLL(None, use_errno=True)
        _fstatfs = libc.fstatfs
        _fstatfs.argtypes = (ctypes.c_int, ctypes.c_void_p)
        _fstatfs.restype = ctypes.c_int
    buf = ctypes.create_string_buffer(256)  # larger than struct statfs on every Linux
    if _fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value


# Failures that say nothing of procfs, only of this moment (out of descriptors or memory):
# `fd_dir` answers None for now and asks again next time, rather than reopening by name for
# the life of the process because another call held every descriptor for a moment.
_NOT_NOW = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EINTR, errno.EAGAIN})


def _pin() -> int | None:
    """The pinned descriptor; -1 where procfs is not usable for good; None: not now."""
    if sys.platform != "linux":
        return -1
    try:
        fd = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return None if exc.errno in _NOT_NOW else -1
    try:
        if _fs_type(fd) == PROC_SUPER_MAGIC:
            again = os.open(str(fd), os.O_RDONLY | os.O_DIRECTORY | _REOPEN_FLAGS, dir_fd=fd)
            try:
                ours = os.fstat(again)
            finally:
                os.close(again)
            mine = os.fstat(fd)
            if (ours.st_dev, ours.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
    except OSError as exc:
        if exc.errno in _NOT_NOW:
            os.close(fd)
            return None
    except AttributeError:
        pass
    os.close(fd)
    return -1


def fd_dir() -> int | None:
    """This process's /proc/self/fd, checked once (None: no procfs to reopen through, or
    not now)."""
    global _pinned
    if _pinned is None:
        with _lock:
            if _pinned is None:
                found = _pin()
                if found is None:
                    return None
                _pinned = found
    return None if _pinned < 0 else _pinned


def reopen(path_fd: int, flags: int, where: int) -> int:
    """A new descriptor of the inode `path_fd` (O_PATH) refers to, opened with `flags`;
    `where` is `fd_dir()`."""
    return os.open(str(path_fd), (flags & ~os.O_NOFOLLOW) | _REOPEN_FLAGS, dir_fd=where)


def _forget_in_child() -> None:
    global _pinned, _lock
    if _pinned is not None and _pinned >= 0:
        with contextlib.suppress(OSError):
            os.close(_pinned)
    _pinned, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
