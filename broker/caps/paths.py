"""Virtual paths: what a process names, turned into one canonical absolute path.

A process sees a tree rooted at its own fs root. Every path it gives is made absolute
against its cwd (or its root, for a leading "/"), then normalised lexically: "//" and "."
fold away, ".." climbs, and climbing above the process root is an escape (`NotCapable`), not
a clamp. NUL bytes and empty paths are invalid. A trailing "/" means "this must be a
directory". Symlinks are resolved later, by the provider that knows the real tree, and the
result is checked again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from broker.errors import InvalidArgument, NotCapable

MAX_PATH_LEN = 4096
MAX_COMPONENTS = 256


@dataclass(frozen=True, slots=True)
class VirtualPath:
    parts: tuple[str, ...]
    want_dir: bool = False

    @property
    def text(self) -> str:
        return "/" + "/".join(self.parts)


@dataclass(frozen=True, slots=True)
class FileId:
    """What a resolved name leads to, as the provider saw it at the check: device and inode,
    and for a regular file the number of names it has (more than one: a hard link)."""

    dev: int
    ino: int
    names: int = 1

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)


_SET_DEV, _SET_INO, _SET_NAMES = (FileId.__dict__[name].__set__
                                  for name in ("dev", "ino", "names"))


def file_identity(dev: int, ino: int, names: int) -> FileId:
    """`FileId(dev, ino, names)` without the frozen dataclass's `__init__` (an
    `object.__setattr__` per field: twice what setting the slots costs, and a read makes
    one in its check); frozen as ever after."""
    found = object.__new__(FileId)
    _SET_DEV(found, dev)
    _SET_INO(found, ino)
    _SET_NAMES(found, names)
    return found


@lru_cache(maxsize=1024)
def split_absolute(path: str) -> tuple[str, ...]:
    """Components of an already canonical absolute path ("/" → ()): a process's root and
    cwd, worked out once for every path named against them."""
    return tuple(p for p in path.split("/") if p)


def under(parts: tuple[str, ...], root: tuple[str, ...]) -> bool:
    return parts[: len(root)] == root


# Canonical absolute paths normalised lately, by (path, root): a warm process names the same
# few paths again and again, and working one out cost a tenth of an audited read's Python.
# A VirtualPath is immutable, so one is shared. Bounded: only short paths, and emptied whole
# when full (nothing depends on an entry staying).
_seen: dict[tuple[str, str], VirtualPath] = {}
SEEN_MAX_ENTRIES = 1024
SEEN_MAX_PATH = 256


def normalize(path: object, *, root: str = "/", cwd: str = "/") -> VirtualPath:
    if type(path) is str:
        found = _seen.get((path, root))
        if found is not None:
            return found
    if not isinstance(path, str):
        raise InvalidArgument("a path must be a string")
    if type(path) is not str:  # a subclass's `in`, `split`, `==` may lie: its plain text
        path = str.__str__(path)
    if not path:
        raise InvalidArgument("empty path")
    if "\x00" in path:
        raise InvalidArgument("path contains a NUL byte")
    if not path.isascii():
        try:  # the name the provider opens: a lone surrogate past surrogateescape has none
            os.fsencode(path)
        except UnicodeEncodeError:
            raise InvalidArgument("path holds text no file name can hold (a lone "
                                  "surrogate)") from None
    if len(path) > MAX_PATH_LEN:
        raise InvalidArgument("path too long")
    root_parts = split_absolute(root)
    if path[0] == "/" and "/." not in path and "//" not in path and path[-1] != "/":
        # Already canonical (no "", "." or ".." component, no trailing "/"): the usual case.
        parts = (*root_parts, *path[1:].split("/"))
        if len(parts) > MAX_COMPONENTS:
            raise InvalidArgument("path too deep")
        canonical = VirtualPath(parts)
        if len(path) <= SEEN_MAX_PATH and type(root) is str:
            if len(_seen) >= SEEN_MAX_ENTRIES:
                _seen.clear()
            _seen[(path, root)] = canonical
        return canonical
    base = root_parts if path.startswith("/") else split_absolute(cwd)
    parts = list(base)
    for piece in path.split("/"):
        if piece in ("", "."):
            continue
        if piece == "..":
            if len(parts) <= len(root_parts):
                raise NotCapable(f"path {path!r} escapes the process root")
            parts.pop()
        else:
            parts.append(piece)
    if len(parts) > MAX_COMPONENTS:
        raise InvalidArgument("path too deep")
    return VirtualPath(tuple(parts), want_dir=path.endswith("/") and path != "/")
