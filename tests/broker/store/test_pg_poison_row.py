"""A hostile value PostgreSQL cannot hold (a NUL in a text field: an object's name a model
asks `get_object` for) in an audit row that would wait for a commit (a builtin tool's read,
committed with the tool's outcome; a group-committed record) is refused with a typed error
before it is chained. It never waits in front of every later record, where each commit would
fail on it again: that wedged the chain (every later call INVALID_ARGUMENT, the kernel's close
a traceback). SQLite keeps such text as given."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import LibosError
from broker.errors import InvalidArgument
from broker.store import AuditRecord
from broker.store.location import is_database
from broker.store.opening import open_store
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import LIMITS, agent, kernel_over

NUL_NAME = "nul\u0000inside"


def test_a_row_the_store_cannot_hold_never_waits(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        intent = AuditRecord(phase="intent", syscall="obj.get", pid=7, resource=NUL_NAME)
        outcome = AuditRecord(phase="outcome", syscall="obj.get", pid=7, resource=NUL_NAME)
        if is_database(store_at):
            with pytest.raises(InvalidArgument, match="NUL"):
                store.append_pair(intent, outcome, defer=True)
            with pytest.raises(InvalidArgument, match="NUL"):
                store.append_audit(intent, defer=True)
            assert not store.deferred
        else:
            store.append_pair(intent, outcome, defer=True)
        seq = store.append_audit(AuditRecord(phase="outcome", syscall="tool.call", pid=7))
        assert seq == store.head_seq and not store.deferred
        assert store.audit_problems(public_key=store.signer)[1] == []
    finally:
        store.close()


async def test_a_nul_in_a_waiting_row_does_not_wedge_the_chain(
        pg_database: str, tmp_path: Path) -> None:
    async with DenoSandbox(memory_mb=LIMITS.memory_mb) as deno, kernel_over(
            tmp_path, deno, store=pg_database) as kernel:
        pid = agent(kernel)
        await kernel.call_tool(pid, "put_object", {"name": "k", "type": "json", "value": 1})
        with pytest.raises(LibosError) as refused:
            await kernel.call_tool(pid, "get_object", {"name": NUL_NAME})
        assert refused.value.code == "INVALID_ARGUMENT"
        last = [s.record for s in kernel.store.audit_records(pid=pid)
                if s.record.syscall == "tool.call"][-1]
        # (the call had no effect: one record since onecall, its read's refused)
        assert last.phase in ("outcome", "intent+outcome") and last.detail["ok"] is False, last
        assert last.detail["error"] == "INVALID_ARGUMENT"
        got = await kernel.call_tool(pid, "get_object", {"name": "k"})  # the broker goes on
        assert got["value"] == 1, got
        assert not kernel.store.deferred
        assert kernel.store.audit_problems(public_key=kernel.store.signer)[1] == []
