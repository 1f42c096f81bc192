"""A shared broker's memory, outside the database, that a PostgreSQL store's chain is marked
(`recordsig.MARKER`; docs/DESIGN.md, invariant 15 and §9).

From the chain's first `audit.signed` record on, a record that vouches counts only signed by
a trusted key. The marker is chained, but a database writer can delete its row (one link
broken, the records after it whole) or rewrite the chain from before it (hashed again: no
link broken), and a chain without it reads as an older broker's: its unsigned grants held.
So each shared broker keeps the first marker it found (its seq and hash) in its key's
directory, under the name the files beside the database's address go by
(`location.beside`): `<key dir>/marked/<that name>`, owner-only, never through a symlink. At a
shared open, a store remembered marked whose marker is missing or moved is noted (a signed
`caps.unsigned` note, once: `RecordSignatures.moved_note`), and the records that vouch from
the remembered seq on count only signed by a trusted key (failing closed: the genuine ones
a rewrite hashed again lose their signatures too).

A store made again at the address (no record and no process row) has what was remembered of
the old one set aside for that open, if the marker it finds has nothing but the open's own
notes before it (not rows a writer put back while the open looked), and that marker written
over it (`remember`: a new file renamed into place, never a torn or empty one), never
deleted first: a writer who empties the tables for a moment, an open cut off before it
remembers (a crash, a broker stopped), and the rows put back would otherwise leave no memory
at all (red team 11).
A key directory this broker cannot write keeps no memory: the marker alone guards, as before.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from broker.store.signing import is_hex

Marker = tuple[int, str]  # (seq, hash) of the chain's first `audit.signed` record
HASH_HEX = 64
_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW


def place(key_path: Path, database: str) -> Path:
    """Where the marker of the database whose files on this host go under `database` (the
    name `location.beside` gives its address) is remembered, beside the key at `key_path`."""
    return key_path.parent / "marked" / database


def recalled(store: Any) -> tuple[Marker | None, bool]:
    """What `store`'s broker remembers of its chain's marker, and whether this open found the
    store made again (`made_again`: what is remembered is set aside only if the marker then
    found has nothing but an open's own notes before it, `RecordSignatures.see`: rows put
    back between the look and the marker's append are no new store)."""
    return recall(getattr(store, "marker_memory", None)), getattr(store, "made_again", False)


def recall(memory: Path | None) -> Marker | None:
    if memory is None:
        return None
    try:
        fd = os.open(memory, os.O_RDONLY | _FLAGS)
    except OSError:
        return None
    try:
        text = os.read(fd, 256).decode(errors="replace")
    finally:
        os.close(fd)
    seq, _, digest = text.strip().partition(" ")
    if not seq.isdigit() or not is_hex(digest, HASH_HEX):
        return None
    return int(seq), digest


def remember(memory: Path | None, marker: Marker) -> None:
    """Keep `marker` as the store's first (an unwritable key directory: nothing kept)."""
    if memory is None:
        return
    with contextlib.suppress(OSError):
        memory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # (a new file renamed over it: a crash leaves the old memory or the new, whole)
        fresh = memory.with_name(f".{memory.name}.{secrets.token_hex(8)}")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _FLAGS, 0o600)
        try:
            try:
                os.write(fd, f"{marker[0]} {marker[1]}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(fresh, memory)  # (a symlink there is replaced, never followed)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fresh)

