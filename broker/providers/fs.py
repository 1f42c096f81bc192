"""The rooted local filesystem provider.

The virtual tree "/" is one host directory. Symlinks are resolved here, inside that root
(`resolve`), and the result is checked again by the capability layer, with what the name
leads to (`identify`: device, inode, and how many names a file has, so that a hard link is
seen for what it is). Every operation then takes a `CheckedPath` and walks it component by
component with `O_NOFOLLOW` from a descriptor of the root, so a symlink swapped in after the
check makes the call fail instead of being followed; and it acts only on the very file the
check saw (same device and inode, no name gained since), else `Conflict`, with nothing
written: a file is opened without truncation, compared, and only then cut.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat as stat_mod
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, Protocol

from broker.caps import CheckedPath, FileId, VirtualPath, require_proof
from broker.caps.paths import file_identity
from broker.errors import Conflict, InvalidArgument, LimitExceeded, NotCapable
from broker.providers import beneath, procfd
from broker.providers.fs_dirs import AtParent, OpenDir, os_error

MAX_SYMLINK_HOPS = 40
MAX_READ_BYTES = 16 * 1024 * 1024
MAX_LIST_ENTRIES = 10_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted in the tree must not hang the opener (it is refused once seen),
# nor a lease another process holds on a file (EWOULDBLOCK, at once, instead of a wait).
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# A directory something runs in (a cwd): O_PATH needs no read permission on it, only search,
# as chdir does; its /proc/self/fd link is still a cwd.
_CWD_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class FsProvider(Protocol):
    def resolve(self, path: VirtualPath) -> VirtualPath: ...
    def locate(self, path: VirtualPath) -> tuple[VirtualPath, FileId | None]: ...
    def identify(self, path: VirtualPath) -> FileId | None: ...
    def read(self, path: CheckedPath, offset: int, length: int | None) -> bytes: ...
    def write(self, path: CheckedPath, data: bytes, *, append: bool, exclusive: bool) -> int: ...
    def listdir(self, path: CheckedPath) -> tuple[list[dict[str, Any]], int]: ...
    def stat(self, path: CheckedPath) -> dict[str, Any]: ...
    def mkdir(self, path: CheckedPath, *, parents: bool) -> None: ...
    def remove(self, path: CheckedPath, *, recursive: bool) -> None: ...


def _is_text(name: str) -> bool:
    """Whether a name found on the host is text a record, a frame and a capability can carry
    (one that is not UTF-8 comes back from the host as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(name: str, where: str) -> str:
    """A name on a path (where a symlink leads), refused if it is not text: it could be
    neither audited nor named by a process."""
    if not _is_text(name):
        raise InvalidArgument(f"{where}: a name on the host there is not UTF-8 text")
    return name


def same_file(st: os.stat_result, path: CheckedPath) -> None:
    """The file a call is about to act on is the one its check saw, with no name gained since
    (a hard link made after the check), unless a capability allows linked files there."""
    if path.identity is None or (st.st_dev, st.st_ino) != path.identity:
        raise Conflict(f"{path.resource}: the file there changed after it was checked")
    if stat_mod.S_ISREG(st.st_mode) and st.st_nlink > 1 and not path.linked:
        raise Conflict(f"{path.resource}: the file gained another name (a hard link) after "
                       "it was checked")


def _refuse_unopened(st: os.stat_result, path: CheckedPath) -> NoReturn:
    """What is there is not a regular file: refused as an O_NOFOLLOW open would (a link),
    or as changed since the check, or for what it is, in that order."""
    if stat_mod.S_ISLNK(st.st_mode):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
    same_file(st, path)
    if stat_mod.S_ISDIR(st.st_mode):
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
    raise InvalidArgument(f"{path.resource}: not a regular file")


def file_id(st: os.stat_result) -> FileId:
    return file_identity(st.st_dev, st.st_ino,
                         st.st_nlink if stat_mod.S_ISREG(st.st_mode) else 1)


def _kind(mode: int) -> str:
    if stat_mod.S_ISDIR(mode):
        return "dir"
    if stat_mod.S_ISREG(mode):
        return "file"
    if stat_mod.S_ISLNK(mode):
        return "link"
    return "other"


class LocalFs:
    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.root = os.path.realpath(root)
        # Every operation walks from this descriptor, kept for the provider's life (the root
        # is pinned: a directory put in its place later is never acted on): in one openat2
        # where the host has it (`_root_fd`), else one O_NOFOLLOW open per component.
        self._top_fd = os.open(self.root, _DIR_FLAGS)
        weakref.finalize(self, os.close, self._top_fd)
        self._root_fd: int | None = self._top_fd if beneath.usable() else None

    # -- resolution ---------------------------------------------------------------------------

    def resolve(self, path: VirtualPath) -> VirtualPath:
        """Resolve symlinks inside the root. Components that do not exist yet (or cannot: a
        name under a file) are kept as named (a write may create them). A link that leads out
        of the root is refused."""
        return self.locate(path)[0]

    def locate(self, path: VirtualPath) -> tuple[VirtualPath, FileId | None]:
        """The resolved path, and what it leads to if the same look found that out: a path
        that exists with no symlink anywhere on it resolves to itself, and the one O_PATH
        open that proves it also identifies it (instead of a second open for `identify`).
        None: not looked at (call `identify` after checking the resolved path)."""
        if self._root_fd is not None and path.parts:
            found = self._plain(path.parts)
            if found is not None:
                return path, found
        return self._walk(path), None

    def _walk(self, path: VirtualPath) -> VirtualPath:
        pending = list(path.parts)
        done: list[str] = []
        hops = 0
        # The path of `done` relative to the pinned root, ending in "/" (empty at the root),
        # kept as the walk goes (not an `os.path.join` per component: a name here never holds
        # a "/", nor is empty). Looked up from the root's descriptor, never by the root's
        # name: the links resolved are those of the tree the call then acts on, not of a
        # directory put in the root's place (nor of where such a one, a symlink, leads).
        top_fd, top = self._top_fd, ""
        here = top
        while pending:
            name = pending.pop(0)
            host = here + name
            try:
                # (The tree may change between the two calls: a link removed, or replaced by
                # something else, is taken as what the second call finds.)
                st = os.lstat(host, dir_fd=top_fd)
                target = (os.readlink(host, dir_fd=top_fd) if stat_mod.S_ISLNK(st.st_mode)
                          else None)
            except (FileNotFoundError, NotADirectoryError):
                # Kept as named: the check decides on the path, and only then may the call
                # find out it cannot be (an error here would tell a process what lies where
                # a link leads, even outside its scope: a file, not a directory).
                done.append(name)
                done.extend(pending)
                break
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # EINVAL: no longer a link
                    raise os_error(exc, "/" + "/".join([*done, name])) from None
                target = None
            if target is None:
                done.append(name)
                here = host + "/"
                continue
            _text(target, "/" + "/".join([*done, name]))
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise InvalidArgument("too many levels of symbolic links")
            if os.path.isabs(target):
                real = os.path.normpath(target)
                if real != self.root and not real.startswith(self.root + os.sep):
                    raise NotCapable(f"symlink {'/'.join([*done, name])!r} leads out of the root")
                base: list[str] = []
                target = os.path.relpath(real, self.root)
            else:
                base = list(done)
            for piece in target.split("/"):
                if piece in ("", "."):
                    continue
                if piece == "..":
                    if not base:
                        raise NotCapable(
                            f"symlink {'/'.join([*done, name])!r} leads out of the root")
                    base.pop()
                else:
                    base.append(piece)
            pending = base + pending
            done, here = [], top
        return VirtualPath(tuple(done), path.want_dir)

    def _plain(self, parts: tuple[str, ...]) -> FileId | None:
        """What the path leads to if it exists with no symlink anywhere on it (then it resolves
        to itself): one openat2 that refuses any symlink, instead of an lstat per component.
        Anything else (a link, a missing name, an error: None) is left to the walk to answer."""
        try:
            st = self._lstat_beneath(parts)
        except OSError:
            return None
        return None if stat_mod.S_ISLNK(st.st_mode) else file_id(st)

    def _lstat_beneath(self, parts: tuple[str, ...]) -> os.stat_result:
        """lstat of what `parts` names, reached with no symlink on the way: O_PATH |
        O_NOFOLLOW opens a symlink in last place as itself (and opens nothing: a FIFO or a
        device is not touched). ELOOP for a link on the way, as the walk reports it."""
        assert self._root_fd is not None
        fd = beneath.open_beneath(self._root_fd, parts, _PATH_FLAGS)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def identify(self, path: VirtualPath) -> FileId | None:
        """What a resolved path leads to now (None: nothing there yet)."""
        if self._root_fd is not None:
            try:
                return file_id(self._lstat_beneath(path.parts))
            except (FileNotFoundError, NotADirectoryError):
                return None
            except OSError as exc:
                raise os_error(exc, path.text) from None
        if not path.parts:
            return file_id(os.fstat(self._top_fd))
        try:
            with self._dir(path.parts[:-1]) as dfd:
                return file_id(os.stat(path.parts[-1], dir_fd=dfd, follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise os_error(exc, path.text) from None

    # -- descriptor walking -------------------------------------------------------------------

    def _open_beneath(self, parts: tuple[str, ...], flags: int) -> int:
        """openat2 from the root; errors as the component walk below reports them."""
        assert self._root_fd is not None
        try:
            return beneath.open_beneath(self._root_fd, parts, flags)
        except NotADirectoryError:
            # As in the walk: with O_DIRECTORY, a symlink in last place says ENOTDIR. Report
            # it as what it is (ELOOP → Conflict).
            if flags & os.O_DIRECTORY and parts and self._plain_link(parts):
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), parts[-1]) from None
            raise

    def _plain_link(self, parts: tuple[str, ...]) -> bool:
        try:
            return stat_mod.S_ISLNK(self._lstat_beneath(parts).st_mode)
        except OSError:
            return False

    def open_directory(self, parts: tuple[str, ...]) -> int:
        """A descriptor of the directory `parts` (resolved) names, reached from the pinned
        root with no symlink on the way, for what runs there (`shell.run`'s cwd): never by
        the root's host name, where another directory may stand by now. An O_PATH
        descriptor, each component too: a directory with search but no read permission is
        a cwd, as it was for chdir. The caller closes it."""
        try:
            fd = self._open_dir(parts, _CWD_FLAGS)
            try:  # (O_PATH opens what chdir may refuse: refuse it here, typed, as before)
                if not os.access(".", os.X_OK, dir_fd=fd, effective_ids=True):
                    raise OSError(errno.EACCES, os.strerror(errno.EACCES))
            except BaseException:
                os.close(fd)
                raise
            return fd
        except OSError as exc:
            raise os_error(exc, "/" + "/".join(parts)) from None

    def _open_dir(self, parts: tuple[str, ...], flags: int = _DIR_FLAGS) -> int:
        """A descriptor of the directory `parts` names, reached with no symlink on the way
        (the caller closes it)."""
        if self._root_fd is not None:
            return self._open_beneath(parts, flags)
        top = fd = self._top_fd
        if not parts:
            return os.open(".", flags, dir_fd=top)  # (a descriptor the caller may close)
        try:
            for part in parts:
                try:
                    nxt = os.open(part, flags, dir_fd=fd)
                except NotADirectoryError:
                    # Linux checks O_DIRECTORY before O_NOFOLLOW: a symlink swapped in for a
                    # directory says ENOTDIR. Report it as what it is (ELOOP → Conflict).
                    if stat_mod.S_ISLNK(os.lstat(part, dir_fd=fd).st_mode):
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part) from None
                    raise
                if fd != top:
                    os.close(fd)
                fd = nxt
        except BaseException:
            if fd != top:
                os.close(fd)
            raise
        return fd

    def _dir(self, parts: tuple[str, ...]) -> OpenDir:
        return OpenDir(self._open_dir, parts)

    def _at(self, checked: object, what: str) -> AtParent:
        """(descriptor of the parent directory, last component) for a checked path."""
        return AtParent(self._open_dir, checked, what)

    # -- operations ----------------------------------------------------------------------------

    def _open_file(self, opener: Callable[[int], int], path: CheckedPath,
                   flags: int) -> tuple[int, os.stat_result]:
        """Open the checked file (never creating it) with `flags`, after making sure it is the
        one checked and a regular file, without ever opening anything else: `opener(flags)`
        first opens it O_PATH, which opens nothing (a FIFO's writer is not woken, a device's
        driver is not called), and only that very inode is then opened for real, through
        procfs (`procfd`); without procfs, by name again; either way it must be the same
        inode."""
        pfd = opener(_PATH_FLAGS)
        try:
            st = os.fstat(pfd)
            if not stat_mod.S_ISREG(st.st_mode):
                _refuse_unopened(st, path)
            same_file(st, path)
            # Non-blocking either way: a lease held elsewhere on the file makes an open
            # wait for the host's lease-break-time (45 s), the broker's loop with it.
            flags |= _FILE_FLAGS
            where = procfd.fd_dir()
            fd = opener(flags) if where is None else procfd.reopen(pfd, flags, where)
        finally:
            os.close(pfd)
        try:  # (through procfs too: were its pinned descriptor ever closed and reused...)
            now = os.fstat(fd)
            if now.st_ino != st.st_ino or now.st_dev != st.st_dev:
                raise Conflict(f"{path.resource}: the file there changed while it was opened")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _open_read(self, checked: object) -> tuple[int, os.stat_result]:
        path = require_proof(checked, CheckedPath)
        if self._root_fd is None or not path.parts:
            with self._at(path, "read") as (dfd, name):
                return self._open_file(partial(os.open, name, dir_fd=dfd), path, os.O_RDONLY)
        root, parts = self._root_fd, path.parts
        try:  # one openat2 for the whole path instead of the parent's walk and an openat
            return self._open_file(partial(beneath.open_beneath, root, parts), path,
                                   os.O_RDONLY)
        except OSError as exc:
            raise os_error(exc, path.resource) from None

    def read(self, path: CheckedPath, offset: int, length: int | None) -> bytes:
        limit = MAX_READ_BYTES if length is None else min(length, MAX_READ_BYTES)
        fd, st = self._open_read(path)
        try:
            size = st.st_size
            if length is None and size - offset > MAX_READ_BYTES:
                raise LimitExceeded(f"file is {size} bytes; read at most {MAX_READ_BYTES}")
            return os.pread(fd, max(0, min(limit, size - offset)), offset)
        finally:
            os.close(fd)

    def write(self, path: CheckedPath, data: bytes, *, append: bool, exclusive: bool) -> int:
        with self._at(path, "write") as (dfd, name):
            truncate = False
            if exclusive or path.identity is None:
                # Nothing was there at the check: create it, or fail if something came since.
                try:
                    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FILE_FLAGS,
                                 0o644, dir_fd=dfd)
                except FileExistsError:
                    if exclusive:
                        raise
                    raise Conflict(f"{path.resource}: a file appeared there after it was "
                                   "checked") from None
            else:
                fd, _ = self._open_file(partial(os.open, name, dir_fd=dfd), path,
                                        os.O_WRONLY | (os.O_APPEND if append else 0))
                truncate = not append  # only now: the file is the one checked
            try:  # (a truncation refused too closes the descriptor)
                if truncate:
                    os.ftruncate(fd, 0)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        return len(data)

    def listdir(self, path: CheckedPath) -> tuple[list[dict[str, Any]], int]:
        """The entries by name, and how many names were left out: those that are not UTF-8,
        which no process could name, nor a record or a frame carry (a count, for the
        record). Every name counts against the bound."""
        checked = require_proof(path, CheckedPath)
        unnamed = 0
        try:
            with self._dir(checked.parts) as fd:
                same_file(os.fstat(fd), checked)
                entries = []
                with os.scandir(fd) as it:
                    for entry in it:
                        if len(entries) + unnamed >= MAX_LIST_ENTRIES:
                            raise LimitExceeded(f"more than {MAX_LIST_ENTRIES} entries")
                        if not _is_text(entry.name):
                            unnamed += 1
                            continue
                        st = entry.stat(follow_symlinks=False)
                        entries.append({"name": entry.name, "type": _kind(st.st_mode),
                                        "size": st.st_size})
        except OSError as exc:
            raise os_error(exc, checked.resource) from None
        return sorted(entries, key=lambda e: e["name"]), unnamed

    def stat(self, path: CheckedPath) -> dict[str, Any]:
        checked = require_proof(path, CheckedPath)
        if self._root_fd is not None:  # (a link in last place is described, not followed)
            try:
                st = self._lstat_beneath(checked.parts)
            except OSError as exc:
                raise os_error(exc, checked.resource) from None
        elif not checked.parts:
            st = os.fstat(self._top_fd)
        else:
            with self._at(checked, "stat") as (dfd, name):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        same_file(st, checked)
        if checked.want_dir and not stat_mod.S_ISDIR(st.st_mode):
            raise InvalidArgument(f"{checked.resource}: a trailing slash names a directory")
        return {"type": _kind(st.st_mode), "size": st.st_size, "mtime": st.st_mtime}

    def mkdir(self, path: CheckedPath, *, parents: bool) -> None:
        checked = require_proof(path, CheckedPath)
        if parents:
            for depth in range(1, len(checked.parts)):
                try:
                    with self._dir(checked.parts[: depth - 1]) as dfd:
                        os.mkdir(checked.parts[depth - 1], 0o755, dir_fd=dfd)
                except FileExistsError:
                    continue
                except OSError as exc:
                    raise os_error(exc, checked.resource) from None
        with self._at(checked, "mkdir") as (dfd, name):
            try:
                os.mkdir(name, 0o755, dir_fd=dfd)
            except FileExistsError:
                if not parents:
                    raise
                if not stat_mod.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    raise

    def remove(self, path: CheckedPath, *, recursive: bool) -> None:
        with self._at(path, "remove") as (dfd, name):
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) != path.identity:
                raise Conflict(f"{path.resource}: what is there changed after it was checked")
            if path.want_dir and not stat_mod.S_ISDIR(st.st_mode):
                raise InvalidArgument(f"{path.resource}: a trailing slash names a directory")
            if not stat_mod.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=dfd)
            elif recursive:
                shutil.rmtree(name, dir_fd=dfd)
            else:
                os.rmdir(name, dir_fd=dfd)
