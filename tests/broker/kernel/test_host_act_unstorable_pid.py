"""Red team (session 16): a host act naming a pid no store can hold (past 64 bits) is refused
with its typed error and recorded (the pid named by its resource), never the driver's
`OverflowError` from a record the store refuses (an audit record is never set aside)."""

from __future__ import annotations

import pytest

from broker import Kernel, NotFound


@pytest.mark.parametrize("pid", [2**70, -(2**70)])
async def test_a_kill_of_a_pid_past_64_bits_is_not_found_and_recorded(kernel: Kernel,
                                                                       pid: int) -> None:
    with pytest.raises(NotFound):
        kernel.kill(pid)
    last = list(kernel.store.audit_records())[-1]
    assert last.record.phase == "rejected" and last.record.pid is None
    assert last.record.detail["error"] == "NOT_FOUND"
    assert kernel.store.audit_problems(public_key=kernel.store.signer)[1] == []
