"""A single writer's memory of the newest anchor it signed for a store, kept outside the store.

The lock file beside an SQLite store holds the signed anchor, but whoever writes the database
directory can remove it (or put an older one back): the next open would then take the chain
whole, as a store from before signed anchors. So each time a single writer signs its anchor it
also writes it here, in its key's directory (`<key dir>/anchors/<sha256 of the store's
location>`, owner-only, the lock file's signed slot format: one `pwrite`, never per call). At
open, a lock file with no signed anchor, or an older one than remembered, is a problem, and
the remembered anchor stands for it: records past it vouch for nothing.

A store this key never signed at this location (a store older than signed anchors, or a copy
moved here) has no memory: it is taken as before.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from broker.store import anchor
from broker.store.keys import AuditKey


def place(key: AuditKey, anchor_path: str) -> Path:
    """Where the anchor of the store whose lock (or anchor) file is `anchor_path` is kept.
    The directory is resolved (a relative path, `..`), the file's own name is not: a
    symlink put in the database's directory does not move the memory."""
    return place_in(key.path.parent, anchor_path)


def place_in(key_dir: Path, anchor_path: str) -> Path:
    """`place`, for the key kept in `key_dir` (a verifier's, which holds no key open)."""
    digest = hashlib.sha256(location(anchor_path).encode(errors="surrogateescape")).hexdigest()
    return key_dir / "anchors" / digest


def location(path: str | Path) -> str:
    """`path` as its store's memories name it: the directory resolved, the name as it is."""
    where = Path(path)
    return str(where.parent.resolve() / where.name)


def recall(memory: Path | None) -> anchor.Signed | None:
    return None if memory is None else anchor.read(memory)[1]


def remember(memory: Path | None, signed: anchor.Signed) -> None:
    """Keep `signed` as the newest anchor this writer signed (replacing the last: a store made
    again at the same place is remembered from its first signature on)."""
    if memory is None:
        return
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        try:
            fd = os.open(memory, flags, 0o600)
        except FileNotFoundError:  # (the first signing: its directory is made once)
            memory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(memory, flags, 0o600)
    except OSError:  # (a key directory the writer cannot write, e.g. a read-only secret:
        return  # the store is guarded by its lock file alone, as before; DESIGN §9)
    try:
        anchor.write_signed(fd, signed)
    finally:
        os.close(fd)


def standing(memory: Path | None, signed: anchor.Signed | None, records: int,
             hash_at: Callable[[int], str | None], *, made_again: bool
             ) -> tuple[anchor.Signed | None, list[str]]:
    """The signed anchor that stands at a writer's open: the lock file's, unless it is missing,
    older than the one remembered, or claims a newer record but is not signed as it was (by the
    remembered anchor's key) or lies off the chain (of `records`): then the remembered one, and
    the problem line (a forged newer anchor taken as it was left only the lock file's old head
    vouching: the genuine ends after it counted for nothing). A store `made_again` at this
    place (no record and no process row: its lock file removed with it) is not one cut: it
    holds nothing to vouch for, so nothing is refused or noted (`libos demo --db`). An empty
    chain beside process rows is an audit wiped: the memory stands, and says so."""
    if made_again:
        return signed, []
    kept = recall(memory)
    if kept is None or not kept.verifies() or (signed is not None and signed.seq >= kept.seq
                                               and _holds(signed, kept, records, hash_at)):
        return signed, []
    was = ("has no signed anchor" if signed is None else f"signed only record {signed.seq}"
           if signed.seq < kept.seq else f"holds an anchor of record {signed.seq} off the chain "
           "or signed by someone else (not this key)")
    return kept, [f"record {kept.seq}: the lock file {was}, but this user's key signed record "
                  f"{kept.seq} of this store (remembered in {memory}): the lock file was "
                  "removed or put back; records after the remembered anchor vouch for nothing"]


def _holds(signed: anchor.Signed, kept: anchor.Signed, last_seq: int,
           hash_at: Callable[[int], str | None]) -> bool:
    # (An anchor past the chain's end is a tail cut, which the anchor check names itself: only
    # one that lands on a record of another hash is off the chain.)
    return signed.key == kept.key and signed.verifies() and (
        signed.seq == 0 or signed.seq > last_seq or hash_at(signed.seq) == signed.hash)
