"""Red team 10 on lane loose's f36ff6c (and 88e9672): `proc.wait` and `proc.receive` check
that what they take can be sent to the tool before recording `ok`, but against Deno's frame
(16 MiB) only. A WASM tool's answers are bounded by its message size (4 MiB): a message
between the two is taken from the mailbox and recorded `ok`, body and all, while the WASM
tool gets `LimitExceeded`. Severity: low-medium (as the Deno case: the chain says the tool
was handed what it never saw, and the message is gone), open to any sender whose body no
4 MiB bound stops (a planner's `send`, the host, a Deno tool's frame). Expected to fail:
the check would need the calling sandbox's own bound (DESIGN §9)."""

from __future__ import annotations

import pytest

from broker import Kernel
from tests.sandboxes.test_wasm import cache_dir, register, start, syscall_tool, wasm, wk  # noqa: F401

RECEIVE = syscall_tool("proc.receive", "(call $mp_map (i32.const 0))")


@pytest.mark.xfail(strict=True, reason=(
    "proc.receive checks Deno's frame only: a WASM tool's 4 MiB message bound is not its "
    "check, so a 5 MiB message it cannot be sent is recorded ok (DESIGN §9)"))
async def test_a_message_a_wasm_tool_cannot_be_sent_is_not_recorded_ok(
        wk: Kernel) -> None:  # noqa: F811
    pid = await start(wk)
    await register(wk, pid, "take", RECEIVE)
    wk.send_message(None, pid, {"big": "x" * (5 << 20)})
    with pytest.raises(Exception) as got:
        await wk.call_tool(pid, "take", {})
    outcomes = [r["detail"] for r in wk.audit(pid)
                if r["syscall"] == "proc.receive" and "ok" in r["detail"]]
    assert outcomes and outcomes[-1]["ok"] is False, (got.value, outcomes[-1])
