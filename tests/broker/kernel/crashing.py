"""A broker that stops dead at a chosen store call: an exception no handler takes, and from
then on every write to the store fails, so nothing after the point is recorded, while every
write before it is committed (as after a SIGKILL)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel
from broker.kernel.faults import store_faults_typed
from broker.store import AuditRecord, SQLiteStore
from broker.store.audit import CLOSES


class Crash(BaseException):
    """The broker stops here."""


WRITES = ("append_audit", "append_pair", "append_call", "transaction")


def crash_after(method: str, when: Callable[..., bool], *, before: bool = False
                ) -> Callable[[], None]:
    """Make `SQLiteStore.<method>` stop the broker right after a call that `when` picks (with
    `before`: instead of it, `when` given None for its result); returns the undo."""
    originals = {name: getattr(SQLiteStore, name) for name in {method, *WRITES}}
    dead = False

    def patched(name: str) -> Callable[..., Any]:
        def call(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
            nonlocal dead
            if dead:
                raise Crash(f"{name} after the crash")
            if before and name == method and when(None, *args, **kwargs):
                dead = True
                raise Crash(method)
            result = originals[name](self, *args, **kwargs)
            if not before and name == method and when(result, *args, **kwargs):
                dead = True
                raise Crash(method)
            return result
        return call

    for name in originals:
        setattr(SQLiteStore, name, patched(name))
    return lambda: [setattr(SQLiteStore, n, f) for n, f in originals.items()]  # type: ignore[func-returns-value]


def outcome_of(syscall: str) -> Callable[..., bool]:
    """Picks the successful outcome of `syscall`, appended alone (`append_audit`), with its
    intent in one record (phase `intent+outcome`: a read's, or a tool call's written whole by
    `append_call`) or after it (`append_pair`)."""
    def when(_: Any, *records: Any, **__: Any) -> bool:
        record = records[1] if len(records) > 1 and isinstance(records[1], AuditRecord) \
            else records[0]
        return (record.phase in CLOSES and record.syscall == syscall
                and record.detail.get("ok") is True)
    return when


async def crashing(db: Path, body: Callable[[Kernel], Any]) -> None:
    with pytest.raises(BaseException) as caught:  # trio wraps it in a group
        async with Kernel.open(db) as kernel:
            await body(kernel)
            await trio.sleep(10)
    assert caught.group_contains(Crash) if isinstance(caught.value, BaseExceptionGroup) \
        else isinstance(caught.value, Crash)


def let_go_as_a_crash(store: SQLiteStore) -> None:
    """What the end of a crashed broker's process does to a store it never closed: its
    connection and both writer's locks (beside the file, and on the file itself) let go."""
    store._db.close()
    for fd in (store._lock_fd, store._file_fd):
        if fd is not None:
            os.close(fd)


async def as_a_step(kernel: Kernel, pid: int, name: str, args: Any) -> Any:
    """Call tool `name` as a planner's step does (`Scheduler._act`), not as a host's call
    (`Kernel.call_tool`), which recovery never takes for a pending step's own call. A store
    that fails is a typed error, as there."""
    with store_faults_typed:
        return await kernel.dispatcher.run(kernel.process(pid), None, "tool.call",
                                           {"name": name, "args": args}, checked=True)
