"""Exactly-once delivery across crashes, for the syscalls that take from a queue.

`proc.receive` takes a message and `proc.wait_event` marks an event seen, each marked with
the audit seq of the intent that took it. After a crash, what such a syscall took is either
handed to the planner (as its step's result) or put back in its queue: never both, never
neither. Recovery decides which; this module finds and puts back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from broker.store import SQLiteStore

TAKERS = ("proc.receive", "proc.wait_event")


def _put_back(store: SQLiteStore, syscall: str) -> Callable[[list[int]], int]:
    return {"proc.receive": store.untake_messages,
            "proc.wait_event": store.unsee_events}[syscall]


def taken(store: SQLiteStore, syscall: str, intent: int) -> dict[str, Any] | None:
    """What the syscall of that intent took, exactly as it returned it (None if nothing)."""
    return {"proc.receive": store.message_taken_by,
            "proc.wait_event": store.event_seen_by}[syscall](intent)


def put_back(store: SQLiteStore, rows: Iterable[Any]) -> int:
    """Put back everything the intents among `rows` (audit rows) took. Returns how many."""
    intents: dict[str, list[int]] = {}
    for row in rows:
        if row["phase"] == "intent" and row["syscall"] in TAKERS:
            intents.setdefault(row["syscall"], []).append(row["seq"])
    return sum(_put_back(store, syscall)(seqs) for syscall, seqs in intents.items())
