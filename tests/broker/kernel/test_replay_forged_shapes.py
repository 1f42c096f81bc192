"""Replay (`Kernel.replay`) reads the records of one invocation. On a chain brokers share
(PostgreSQL, `broker=`) a database writer without the key may append intact records naming
it, which the next broker's record links and its signed anchor covers (invariant 15: such a
record vouches for nothing, but it is in the chain). A `follows` or an `intent` that is not a
seq there (a list, a map) was taken as a dict key and raised `TypeError` (unhashable) out of
the replay: a traceback, no verdict. Now such a field names no call and the replay ends in a
verdict; a refusal's or an outcome's error that is not text (or none: a `KeyError`) reads as
`CANCELLED`.

(On SQLite a record past the signed anchor makes replay refuse, `Tampered`, before it reads
anything: `test_replay_vouched.py`.)"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from broker import Kernel
from broker.store.audit import AuditRecord
from tests.broker.kernel.test_label_columns_redteam21 import _forge_beside
from tests.conftest import open_image

WRITE = {"path": "/out.txt", "data": "once"}
FORGED = {
    "an intent that follows": lambda v: ("intent", {"args": {}, "follows": v}),
    "an outcome's intent": lambda v: ("outcome", {"ok": False, "intent": v,
                                                  "error": "CONFLICT"}),
    "a refusal that follows": lambda v: ("denied", {"error": "NOT_CAPABLE", "follows": v}),
    "a refusal without its error": lambda v: ("denied", {"message": v}),
}


@pytest.mark.parametrize("value", [[1], {"a": 1}], ids=["list", "map"])
@pytest.mark.parametrize("what", FORGED)
async def test_a_forged_record_of_any_shape_in_an_invocation_gives_a_verdict(
        pg_database: str, what: str, value: Any) -> None:
    async with Kernel.open(pg_database, broker="a") as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/**:read,write"])
        await kernel.call_tool(pid, "write_file", WRITE)
        inv = next(r["seq"] for r in kernel.audit(pid) if r["syscall"] == "tool.call")
        phase, detail = FORGED[what](value)
        _forge_beside(pg_database, AuditRecord(
            phase=phase, syscall="fs.write", pid=pid, inv=inv, tool="write_file",
            resource="/out.txt", detail=detail))
        # This broker's next record links to it, and its anchor, signed, covers both.
        await kernel.call_tool(pid, "write_file", {**WRITE, "data": "twice"})
        await trio.sleep(0.2)
        replayed = await kernel.replay(inv)
        assert replayed["inv"] == inv and replayed["replayed"] == {"ok": True, "value": 4}
        assert replayed["recorded"] == {"ok": True, "value": 4}
        # The neighbour: the write made after it replays the same.
        again = [r["seq"] for r in kernel.audit(pid) if r["syscall"] == "tool.call"
                 and r["phase"] == "intent"][-1]
        assert (await kernel.replay(again))["same"] is True
