"""fs: files in the process's own tree, through a rooted provider."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from broker.caps import CheckedPath, Decision, VirtualPath
from broker.errors import InvalidArgument, NotFound
from broker.store.data_labels import ancestors, parent
from broker.store.pg_connection import StoreFailed
from broker.syscalls.context import SyscallContext
from broker.syscalls.table import PATH, syscall

T = TypeVar("T")
log = logging.getLogger("libos.fs")


def _path_check(right: str) -> Any:
    def authorize(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
        return ctx.check_path(right, args["path"])

    return authorize


def _looked_at(ctx: SyscallContext, path: str, look: Callable[[], T]) -> T:
    """Look at a file or directory: what comes back (content, size, names) carries the labels
    it was kept with, and a miss carries its directory's too (whether a labelled process made
    or removed a name there is something of what it saw)."""
    store = ctx.services.store
    ctx.result_labels = store.file_labels(path)
    try:
        return look()
    except NotFound:
        ctx.result_labels = ctx.result_labels | store.file_labels(parent(path))
        raise


def _named(ctx: SyscallContext, path: str) -> None:
    """A labelled caller makes, replaces or removes a name: the directory's listing (names,
    sizes, what is missing) carries its label from now on (before the effect)."""
    store, label, directory = ctx.services.store, ctx.label, parent(path)
    if label and not label <= (held := store.file_labels(directory)):
        store.set_file_labels(directory, held | label)


def _data(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise InvalidArgument("fs.write: data must be a string or bytes")


@syscall(
    "fs.read",
    idempotent=True,
    doc="Read a file; text (UTF-8) unless binary is true.",
    args={
        "path": PATH,
        "offset": {"type": "integer", "minimum": 0},
        "length": {"type": "integer", "minimum": 0},
        "binary": {"type": "boolean"},
    },
    required=("path",),
    kind="fs",
    right="read",
    authorize=_path_check("read"),
)
def fs_read(ctx: SyscallContext, args: dict[str, Any], proof: CheckedPath) -> str | bytes:
    if proof.want_dir:
        raise InvalidArgument("fs.read: a trailing slash names a directory")
    data = _looked_at(ctx, proof.resource, lambda: ctx.services.fs.read(
        proof, args.get("offset", 0), args.get("length")))
    if args.get("binary"):
        return data
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidArgument("fs.read: file is not UTF-8 text; read it with binary") from None


@syscall(
    "fs.write",
    doc="Write a file (replace, append, or create only if absent). Returns bytes written.",
    args={
        "path": PATH,
        "data": {},
        "append": {"type": "boolean"},
        "exclusive": {"type": "boolean"},
    },
    required=("path", "data"),
    kind="fs",
    right="write",
    authorize=_path_check("write"),
)
def fs_write(ctx: SyscallContext, args: dict[str, Any], proof: CheckedPath) -> int:
    if proof.want_dir:
        raise InvalidArgument("fs.write: a trailing slash names a directory")
    data, append = _data(args["data"]), args.get("append", False)
    store, label = ctx.services.store, ctx.label
    held = store.file_labels(proof.resource)
    if not label <= held:  # labelled before the effect: a crash leaves it over-, never under-
        store.set_file_labels(proof.resource, held | label)
    _named(ctx, proof.resource)
    written = ctx.services.fs.write(proof, data, append=append,
                                    exclusive=args.get("exclusive", False))
    if not append and held - label:  # replaced: the file holds only this writer's data now
        _narrow(store, proof.resource, label, ctx.intent_seq)
    return written


def _narrow(store: Any, path: str, label: frozenset[str], replaced_at: int) -> None:
    """A replaced file's labels narrowed to its writer's, after the effect; what records
    after the replace's intent (seq `replaced_at`) show written there still counts (a peer's
    append in a chain brokers share, however soon after the replace). A store that
    refuses it leaves the labels as they were: more than the file holds now, the safe side
    (as a crash here would). Not an error: the file WAS written, and a typed "store failed,
    nothing was done" `Conflict` would record an effect that happened as not, and invite the
    caller to do it again."""
    try:
        store.set_file_labels(path, label, replaced_at=replaced_at)
    except (sqlite3.Error, StoreFailed) as exc:
        log.warning("fs.write: %s was written, but its labels were not narrowed to the "
                    "writer's (the store failed: %s); they stay as they were", path[:256], exc)


@syscall(
    "fs.list",
    idempotent=True,
    doc="List a directory: [{name, type, size}], sorted by name.",
    args={"path": PATH},
    kind="fs",
    right="read",
    authorize=lambda ctx, args: ctx.check_path("read", args.get("path", ".")),
)
def fs_list(ctx: SyscallContext, args: dict[str, Any], proof: CheckedPath) -> list[dict[str, Any]]:
    entries, unnamed = _looked_at(ctx, proof.resource, lambda: ctx.services.fs.listdir(proof))
    if unnamed:  # names on the host that are not text: left out, and said so in the record
        ctx.outcome_detail["unnamed"] = unnamed
    return entries


@syscall(
    "fs.stat",
    idempotent=True,
    doc="Describe a path: {type, size, mtime}. Symlinks are resolved inside the root.",
    args={"path": PATH},
    required=("path",),
    kind="fs",
    right="read",
    authorize=_path_check("read"),
)
def fs_stat(ctx: SyscallContext, args: dict[str, Any], proof: CheckedPath) -> dict[str, Any]:
    return _looked_at(ctx, proof.resource, lambda: ctx.services.fs.stat(proof))


def _mkdir_check(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    decision = ctx.check_path("write", args["path"])
    if args.get("parents"):  # each directory it would make above must be allowed as well
        parts: tuple[str, ...] = decision.proof.parts  # type: ignore[attr-defined]
        for depth in range(len(parts) - 1, 0, -1):
            if ctx.services.fs.identify(VirtualPath(parts[:depth])) is not None:
                break  # (and so is everything above it)
            ctx.check_path("write", ctx.view("/" + "/".join(parts[:depth])))
    return decision


@syscall(
    "fs.mkdir",
    doc="Make a directory (and its parents with parents=true).",
    args={"path": PATH, "parents": {"type": "boolean"}},
    required=("path",),
    kind="fs",
    right="write",
    authorize=_mkdir_check,
)
def fs_mkdir(ctx: SyscallContext, args: dict[str, Any], proof: CheckedPath) -> None:
    _named(ctx, proof.resource)
    if args.get("parents"):  # the directories it may make above: named in their parents
        for ancestor in ancestors(proof.resource):
            _named(ctx, ancestor)
    ctx.services.fs.mkdir(proof, parents=args.get("parents", False))


def _remove_check(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    # Removing a hard link's name never touches the file it shares: allowed without `link`.
    decision = ctx.check_path("write", args["path"], refuse_links=False)
    if args.get("recursive"):  # it takes everything beneath: all of it must be allowed
        ctx.check_subtree(decision.proof)  # type: ignore[arg-type]
    return decision


@syscall(
    "fs.remove",
    doc="Remove a file or an empty directory (any directory with recursive=true).",
    args={"path": PATH, "recursive": {"type": "boolean"}},
    required=("path",),
    kind="fs",
    right="write",
    authorize=_remove_check,
)
def fs_remove(ctx: SyscallContext, args: dict[str, Any], proof: CheckedPath) -> None:
    _named(ctx, proof.resource)
    ctx.services.fs.remove(proof, recursive=args.get("recursive", False))


@syscall(
    "fs.chdir",
    doc="Change the working directory (a directory the process may read). Returns the new cwd.",
    args={"path": PATH},
    required=("path",),
    kind="fs",
    right="read",
    authorize=_path_check("read"),
)
def fs_chdir(ctx: SyscallContext, args: dict[str, Any], proof: CheckedPath) -> str:
    if _looked_at(ctx, proof.resource, lambda: ctx.services.fs.stat(proof))["type"] != "dir":
        raise InvalidArgument(f"fs.chdir: {args['path']!r} is not a directory")
    ctx.services.set_cwd(ctx.pid, proof.resource)
    return ctx.view(proof.resource)


@syscall("fs.cwd", idempotent=True, doc="The working directory, as this process names it.")
def fs_cwd(ctx: SyscallContext, args: dict[str, Any], proof: None) -> str:
    return ctx.view(ctx.process.cwd)
