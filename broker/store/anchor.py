"""The chain's anchor: the head of the audit chain (seq and hash), kept outside the database.

The hash chain proves that what is there was not edited, inserted or reordered; on its own it
cannot prove that nothing was cut off the end, nor that the whole chain was not written
again. The writer keeps the head it appended last in the store's lock file (beside the
database, written after each commit, never ahead of it); `check` compares the chain with it.
A mismatch found when a broker opens the store is written into the chain itself (an
`audit.anchor` record), so the next append cannot erase the evidence.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

ANCHOR_BYTES = 128


def write(fd: int, seq: int, digest: str) -> None:
    os.pwrite(fd, f"{seq} {digest}\n".encode().ljust(ANCHOR_BYTES, b" "), 0)


def read(path: str | Path) -> tuple[int, str] | None:
    try:
        with open(path, "rb") as f:
            seq, digest = f.read(ANCHOR_BYTES).split()
        return int(seq), digest.decode()
    except (OSError, ValueError):
        return None  # no anchor yet (a store no broker has written since), or unreadable


def check(anchor: tuple[int, str] | None, last_seq: int,
          hash_at: Callable[[int], str | None]) -> str | None:
    """What is wrong between the chain and its anchor, as a problem line, or None."""
    if anchor is None:
        return None
    seq, digest = anchor
    if seq > last_seq:
        return (f"record {last_seq + 1}: missing: the chain ends at record {last_seq}, but its "
                f"anchor saw record {seq}: records were removed from the end")
    if seq and hash_at(seq) != digest:
        return (f"record {seq}: does not match the chain's anchor: the chain was written "
                "again")
    return None
