"""The in-memory filesystem provider: the same contract as `LocalFs`, in a dict.

For tests, replays and agents whose files need not outlive the broker. It has no symlinks
or hard links, so `resolve` is the identity; every node has an inode number of its own, and
every operation takes a `CheckedPath` like the local provider, acts only on the node the
check saw, and fails with the same typed errors (the shared fs suite runs against both).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from broker.caps import CheckedPath, FileId, VirtualPath, require_proof
from broker.errors import Conflict, InvalidArgument, LimitExceeded, NotFound
from broker.providers.fs import MAX_LIST_ENTRIES, MAX_READ_BYTES

_inodes = itertools.count(1)


@dataclass
class _Node:
    is_dir: bool
    data: bytearray = field(default_factory=bytearray)
    children: dict[str, _Node] = field(default_factory=dict)
    mtime: float = field(default_factory=time.time)
    ino: int = field(default_factory=lambda: next(_inodes))


def _same(node: _Node, path: CheckedPath) -> None:
    if path.identity != (0, node.ino):
        raise Conflict(f"{path.resource}: the file there changed after it was checked")


class MemoryFs:
    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self._root = _Node(is_dir=True)
        self._lock = threading.RLock()  # wasm tools reach the provider from a worker thread
        self.max_bytes = max_bytes
        self._used = 0

    def resolve(self, path: VirtualPath) -> VirtualPath:
        return path  # no symlinks here

    def locate(self, path: VirtualPath) -> tuple[VirtualPath, FileId | None]:
        return path, None  # (identified after the check, under the lock)

    def identify(self, path: VirtualPath) -> FileId | None:
        with self._lock:
            try:
                return FileId(0, self._node(path.parts, path.text).ino)
            except (NotFound, InvalidArgument):
                return None

    # -- walking ---------------------------------------------------------------------------

    def _node(self, parts: tuple[str, ...], what: str) -> _Node:
        node = self._root
        for part in parts:
            if not node.is_dir:
                raise InvalidArgument(f"{what}: Not a directory")
            child = node.children.get(part)
            if child is None:
                raise NotFound(f"{what}: no such file or directory")
            node = child
        return node

    def _parent(self, checked: object, what: str) -> tuple[CheckedPath, _Node, str]:
        path = require_proof(checked, CheckedPath)
        if not path.parts:
            raise InvalidArgument(f"{what}: not allowed on the root itself")
        parent = self._node(path.parts[:-1], path.resource)
        if not parent.is_dir:
            raise InvalidArgument(f"{path.resource}: Not a directory")
        return path, parent, path.parts[-1]

    # -- operations --------------------------------------------------------------------------

    def read(self, path: CheckedPath, offset: int, length: int | None) -> bytes:
        with self._lock:
            checked, parent, name = self._parent(path, "read")
            node = parent.children.get(name)
            if node is None:
                raise NotFound(f"{checked.resource}: no such file or directory")
            _same(node, checked)
            if node.is_dir:
                raise InvalidArgument(f"{checked.resource}: Is a directory")
            size = len(node.data)
            if length is None and size - offset > MAX_READ_BYTES:
                raise LimitExceeded(f"file is {size} bytes; read at most {MAX_READ_BYTES}")
            limit = MAX_READ_BYTES if length is None else min(length, MAX_READ_BYTES)
            return bytes(node.data[offset:offset + max(0, limit)])

    def write(self, path: CheckedPath, data: bytes, *, append: bool, exclusive: bool) -> int:
        with self._lock:
            checked, parent, name = self._parent(path, "write")
            node = parent.children.get(name)
            if node is not None and exclusive:
                raise Conflict(f"{checked.resource}: already exists")
            if node is not None:
                _same(node, checked)
            elif checked.identity is not None:
                raise NotFound(f"{checked.resource}: no such file or directory")
            if node is not None and node.is_dir:
                raise InvalidArgument(f"{checked.resource}: Is a directory")
            old = len(node.data) if node is not None else 0
            new = old + len(data) if append else len(data)
            if self._used - old + new > self.max_bytes:
                raise LimitExceeded(f"{checked.resource}: the in-memory filesystem is full")
            if node is None:
                node = parent.children[name] = _Node(is_dir=False)
            if append:
                node.data += data
            else:
                node.data = bytearray(data)
            self._used += new - old
            node.mtime = parent.mtime = time.time()
        return len(data)

    def listdir(self, path: CheckedPath) -> tuple[list[dict[str, Any]], int]:
        checked = require_proof(path, CheckedPath)
        with self._lock:
            node = self._node(checked.parts, checked.resource)
            _same(node, checked)
            if not node.is_dir:
                raise InvalidArgument(f"{checked.resource}: Not a directory")
            if len(node.children) > MAX_LIST_ENTRIES:
                raise LimitExceeded(f"more than {MAX_LIST_ENTRIES} entries")
            return [{"name": name, "type": "dir" if child.is_dir else "file",
                     "size": 0 if child.is_dir else len(child.data)}
                    for name, child in sorted(node.children.items())], 0  # (all are text)

    def stat(self, path: CheckedPath) -> dict[str, Any]:
        checked = require_proof(path, CheckedPath)
        with self._lock:
            node = self._node(checked.parts, checked.resource)
            _same(node, checked)
            if checked.want_dir and not node.is_dir:
                raise InvalidArgument(f"{checked.resource}: a trailing slash names a directory")
            return {"type": "dir" if node.is_dir else "file",
                    "size": 0 if node.is_dir else len(node.data), "mtime": node.mtime}

    def mkdir(self, path: CheckedPath, *, parents: bool) -> None:
        checked = require_proof(path, CheckedPath)
        with self._lock:
            if parents:
                node = self._root
                for part in checked.parts[:-1]:
                    child = node.children.get(part)
                    if child is None:
                        child = node.children[part] = _Node(is_dir=True)
                    elif not child.is_dir:
                        raise InvalidArgument(f"{checked.resource}: Not a directory")
                    node = child
            checked, parent, name = self._parent(checked, "mkdir")
            existing = parent.children.get(name)
            if existing is not None:
                if parents and existing.is_dir:
                    return
                raise Conflict(f"{checked.resource}: already exists")
            parent.children[name] = _Node(is_dir=True)
            parent.mtime = time.time()

    def remove(self, path: CheckedPath, *, recursive: bool) -> None:
        with self._lock:
            checked, parent, name = self._parent(path, "remove")
            node = parent.children.get(name)
            if node is None:
                raise NotFound(f"{checked.resource}: no such file or directory")
            _same(node, checked)
            if checked.want_dir and not node.is_dir:
                raise InvalidArgument(f"{checked.resource}: a trailing slash names a directory")
            if node.is_dir and node.children and not recursive:
                raise Conflict(f"{checked.resource}: directory not empty")
            del parent.children[name]
            self._used -= _size(node)
            parent.mtime = time.time()


def _size(node: _Node) -> int:
    if not node.is_dir:
        return len(node.data)
    return sum(_size(child) for child in node.children.values())
