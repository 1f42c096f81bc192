"""Red team 34 (lane recovfix): an audit row's columns, not only its detail, hold whatever a
database writer made them. SQLite's columns are untyped: an `inv` of text, a `syscall` of
bytes is kept as written, and a record appended past the signed head that way is intact (its
hash is unkeyed, `record_hash` hashes any value). Recovery read such a row's columns as the
broker writes them: closing a forged open intent it copied them into the `outcome unknown`
record, which `check_columns` refused (`InvalidArgument` out of `Kernel.open`, at every open
after: the intent stays open), and a forged intent inside a pending step's call with a
`syscall` of bytes raised `TypeError` (`step_record.may_have_acted`). An edit there may change
what its own process is shown, never stop the open (invariant 15's last paragraph).
(PostgreSQL's columns are typed: not reachable there.)"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.store import AuditRecord
from broker.store.audit_rows import detail_of
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.broker.kernel.test_recovery_forged_shapes import (
    _crashed_mid_receive,
    _no_message_lost,
)
from tests.conftest import open_image

COLUMNS: dict[str, tuple[str, Any]] = {
    "pid of text": ("pid", "p"),
    "pid of bytes": ("pid", b"\x01"),
    "inv of text": ("inv", "x"),
    "inv of bytes": ("inv", b"\x01"),
    "inv a float": ("inv", 1.5),
    "syscall of bytes": ("syscall", b"fs.write"),
    "tool of bytes": ("tool", b"t"),
    "resource of bytes": ("resource", b"/f"),
    "args_hash of bytes": ("args_hash", b"\x00"),
}


def _closed(db_path: Path, seq: int) -> list[Any]:
    """The outcomes that name intent `seq`."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT detail FROM audit WHERE phase='outcome'").fetchall()
    return [d for (text,) in rows if (d := detail_of(text)).get("intent") == seq]


@pytest.mark.parametrize("column", COLUMNS)
async def test_an_open_intent_forged_with_a_column_of_another_type(db_path: Path,
                                                                   column: str) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "job", planner={})
        pid = kernel.spawn("job", caps=["clock:*:read"])
    name, value = COLUMNS[column]
    record = AuditRecord(phase="intent", syscall="fs.write", pid=pid, detail={"args": {}})
    setattr(record, name, value)
    forged = append_past_head(db_path, record)
    for _ in range(2):  # (and the open after: nothing was left open to stop it)
        async with Kernel.open(db_path) as kernel:
            assert kernel.process(pid).alive
            assert await kernel.call_tool(pid, "now", {}) > 0  # the neighbour
    # Closed once, `outcome unknown`, as any intent a crash left open.
    [outcome] = _closed(db_path, forged)
    assert outcome["unknown"] is True


@pytest.mark.parametrize("syscall", [b"fs.write", b"host.x"], ids=["bytes", "host bytes"])
async def test_a_pending_step_with_a_forged_call_of_a_syscall_of_bytes(db_path: Path,
                                                                      syscall: bytes) -> None:
    """The step's call (a `receive` wrapper, its own outcome cut off) is shown a forged intent
    inside it, its `syscall` bytes: not the wrapper's one syscall, so its result is not the
    step's; nothing the broker knows may have acted, so the step runs again."""
    call = await _crashed_mid_receive(db_path)
    append_past_head(db_path, AuditRecord(phase="intent", syscall=syscall, pid=1, inv=call,
                                          tool="receive", detail={"args": {}}))  # type: ignore[arg-type]
    async with Kernel.open(db_path) as kernel:
        status = await kernel.wait(1, timeout=10)
        assert status["state"] == "exited", status
        _no_message_lost(kernel)
