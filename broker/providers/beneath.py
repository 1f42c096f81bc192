"""Open a path strictly beneath a directory descriptor in one system call: Linux's openat2(2)
with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS.

The kernel then refuses, atomically for the whole walk, what the rooted provider's walk
(one `O_NOFOLLOW` open per component) refuses one step at a time: a symlink anywhere on the
path, the last component included (ELOOP), a magic link such as /proc/self/root (ELOOP), and
any way out of the directory, by ".." or an absolute name (EXDEV). Mount points are crossed,
as the walk crosses them. Where openat2 is missing (not Linux, an old kernel, a seccomp
filter that answers ENOSYS or EPERM), `usable()` is false and the provider keeps its walk;
a probe that fails for another reason (out of descriptors) is asked again by the next one.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from functools import partial
from typing import Any

# <linux/openat2.h>
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS

# The generic syscall table gives openat2 this number on both; elsewhere we keep the walk.
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437}
# The kernel may refuse to promise that a path did not escape while the tree was renamed
# under it (EAGAIN); it is safe to ask again, a few times.
_RETRIES = 8


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64)]


_syscall: Any = None
_number = _SYS_OPENAT2.get(platform.machine()) if sys.platform == "linux" else None
_usable: bool | None = None
_hows: dict[tuple[int, int], tuple[_OpenHow, ctypes.c_void_p]] = {}


def _how(flags: int, mode: int) -> tuple[_OpenHow, ctypes.c_void_p]:
    """One `struct open_how` per (flags, mode), made once: building it costs more than the
    call. (A mode is only allowed with O_CREAT or O_TMPFILE.)"""
    found = _hows.get((flags, mode))
    if found is None:
        found = _hows.setdefault((flags, mode), how_entry(_OpenHow(flags, mode, STRICT)))
    return found


def how_entry(how: _OpenHow) -> tuple[_OpenHow, ctypes.c_void_p]:
    """A struct, and its address as the pointer `syscall` is given."""
    return how, ctypes.c_void_p(ctypes.addressof(how))


# `syscall` is called without argtypes (converting each argument through them cost about a
# microsecond a call, more than the rest of it): every argument is handed over as a value of
# its C type already, the number a long, the size a size_t, the struct's address a pointer
# (a descriptor goes as an int, the path's bytes as a char *).
_HOW_SIZE = ctypes.c_size_t(ctypes.sizeof(_OpenHow))


def _raw(dir_fd: int, path: bytes, flags: int, mode: int = 0) -> int:
    # Held in a local for the whole call: the kernel reads the struct by address, and the
    # cache entry may be another thread's struct (two kernels in one process), so ours would
    # otherwise be freed before the call and the kernel read whatever is there then.
    how = _hows.get((flags, mode)) or _how(flags, mode)
    assert _syscall is not None
    for _ in range(_RETRIES):
        fd = _syscall(dir_fd, path, how[1], _HOW_SIZE)
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code not in (errno.EAGAIN, errno.EINTR):
            break
    raise OSError(code, os.strerror(code), os.fsdecode(path))


# What an openat2 that fails says of the host for good: no such call (ENOSYS), a seccomp
# filter's refusal (EPERM), or flags or a struct it does not know (EINVAL, E2BIG).
_NO_OPENAT2 = frozenset({errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.E2BIG,
                         errno.EOPNOTSUPP})


def usable() -> bool:
    """Whether openat2 works here, found out with a harmless open of "." beneath "/". A "yes",
    or a "no" the host gave for good (`_NO_OPENAT2`), is remembered; any other failure (out
    of descriptors or memory, interrupted) is only "not now": False, and the next provider
    asks again rather than walking for the whole life of the process."""
    global _syscall, _usable
    if _usable is not None:
        return _usable
    if _number is None:
        _usable = False
        return False
    if _syscall is None:
        try:
            call = ctypes.CDLL(None, use_errno=True).syscall
        except (OSError, AttributeError):  # no libc to call through
            _usable = False
            return False
        call.restype = ctypes.c_long
        _syscall = partial(call, ctypes.c_long(_number))  # (no argtypes: see `_HOW_SIZE`)
    try:
        root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False  # (EMFILE...): not now
    try:
        os.close(_raw(root, b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        _usable = True
    except OSError as exc:
        if exc.errno not in _NO_OPENAT2:
            return False  # not now
        _usable, _syscall = False, None
    finally:
        os.close(root)
    return bool(_usable)


# The last path encoded, with the very tuple it was made of: a read looks its path up twice
# (the check's look, then the use's), and a warm process names the same path again and
# again. Compared by identity (the tuple is held here, so its id is not reused), replaced
# whole (threads read it).
_last: tuple[tuple[str, ...], bytes] = ((), b".")


def open_beneath(dir_fd: int, parts: tuple[str, ...], flags: int, mode: int = 0) -> int:
    """A descriptor for `parts` beneath `dir_fd` (no parts: the directory itself, opened
    afresh), or OSError with the errno a walk with O_NOFOLLOW would have met (ELOOP for a
    symlink, ENOENT, ENOTDIR...), EXDEV for a way out. Call only when `usable()`."""
    global _last
    last = _last
    if last[0] is parts:
        return _raw(dir_fd, last[1], flags, mode)
    text = "/".join(parts) if parts else "."
    # A C string would end there: never open a shorter path. (Looked for in the text, where
    # only a NUL character encodes to a NUL byte: `in` on bytes cost five times as much.)
    if "\x00" in text:
        raise OSError(errno.EINVAL, "a path component contains a NUL byte")
    path = os.fsencode(text)
    if type(parts) is tuple:
        _last = (parts, path)
    return _raw(dir_fd, path, flags, mode)
