"""An approval request for a call whose arguments nest as deep as a call may (`too_deep`'s
`MAX_DEPTH`, 512 levels in all) is filed, shown and answered like any other: storing its
arguments for people to read went down two Python frames a level and raised RecursionError
past about 490 (the call failed with "tool.call failed: RecursionError", a traceback logged,
no `ask` record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.kernel.too_deep import MAX_DEPTH
from tests.broker.approvals.test_bytearray_request_rt35 import ask_and_approve


def _nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


async def test_a_request_as_deep_as_a_call_may_nest_is_filed_and_answered(tmp_path: Path) -> None:
    body = _nested(MAX_DEPTH - 2)  # with the arguments' map: one level short of the bound
    [request], result, phases = await ask_and_approve(tmp_path, body)
    assert request["args"] == {"to": "ann", "body": body}  # shown whole, as asked
    assert [r["sent"] for r in result] == ["ann"]
    assert ("host.send_note", "ask") in phases and ("host.send_note", "outcome") in phases
