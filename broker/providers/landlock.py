"""Landlock through its raw system calls (ctypes), no root needed.

The parent builds a ruleset (what the child may touch) and passes its descriptor to the
child; the child, between fork and exec, sets no-new-privileges and restricts itself. Where
the kernel has no Landlock (or it is disabled), `available()` says so and callers log it once.

Rules: read and execute beneath the system directories; read and write beneath the
directories named writable (the process's fs root, a private temp dir); read/write of a few
device files. With ABI >= 4 TCP bind/connect are handled too (none allowed: a shell command
gets no TCP network; the network is `net.fetch`'s); with ABI >= 6 signals and abstract unix
sockets are scoped to the sandbox.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (not imported at run time: the shell's shim runs this before a command)
    from collections.abc import Iterable

SYS_CREATE_RULESET = 444  # the same numbers on every architecture (asm-generic)
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

READ_ONLY_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
                  "/opt", "/proc")
DEVICE_FILES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/full")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The Landlock ABI the kernel offers; 0 when there is none."""
    try:
        version = _libc.syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                                ctypes.c_uint32(CREATE_RULESET_VERSION))
    except (AttributeError, OSError):
        return 0
    return int(version) if version > 0 else 0


def unavailable_reason() -> str | None:
    if abi_version() > 0:
        return None
    err = ctypes.get_errno()
    return os.strerror(err) if err else "no landlock system call"


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


def build_ruleset(writable: Iterable[str], readable: Iterable[str] = ()) -> int:
    """A ruleset descriptor for a confined child (the caller closes it after the spawn)."""
    abi = abi_version()
    if abi <= 0:
        raise OSError("landlock is not available")
    handled = _fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=handled)
    size = 8
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    fd = _libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                       ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    fd = int(fd)
    read_exec = EXECUTE | READ_FILE | READ_DIR
    file_rw = READ_FILE | WRITE_FILE | (TRUNCATE if abi >= 3 else 0)
    try:
        for path in (*READ_ONLY_DIRS, *readable):
            _add(fd, path, read_exec, directory=True)
        for path in DEVICE_FILES:
            _add(fd, path, file_rw, directory=False)
        for path in writable:
            _add(fd, path, handled, directory=True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _add(ruleset: int, path: str, access: int, *, directory: bool) -> None:
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return  # not on this system: nothing to allow
    try:
        if not directory:
            access &= READ_FILE | WRITE_FILE | TRUNCATE | EXECUTE | IOCTL_DEV
        rule = _PathBeneath(allowed_access=access, parent_fd=target)
        if _libc.syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                         ctypes.byref(rule), ctypes.c_uint32(0)) < 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path} failed")
    finally:
        os.close(target)


def no_new_privs() -> None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def restrict_self(ruleset: int) -> None:
    """In the child, before exec: no new privileges, then the ruleset."""
    no_new_privs()
    if _libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) < 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
