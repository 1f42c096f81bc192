"""Red team 10 on lane loose's f36ff6c (and 88e9672): `proc.wait` and `proc.receive` check
that what they take can be sent to the tool before recording `ok`, but against Deno's frame
(16 MiB) only. A WASM tool's answers are bounded by its message size (4 MiB): a message
between the two was taken from the mailbox and recorded `ok`, body and all, while the WASM
tool got `LimitExceeded`. Severity: low-medium (as the Deno case: the chain says the tool
was handed what it never saw, and the message is gone), open to any sender whose body no
4 MiB bound stops (a planner's `send`, the host, a Deno tool's frame). Now the check is the
calling tool's sandbox's own (`Sandbox.unsendable`): the WASM tool's receive is recorded as
the `InvalidArgument` it gets, the message taken as in the Deno case; one that fits is
delivered and recorded `ok`. Then (lane heldbits): the refused message was still taken,
never delivered (invariant 7); now it goes back, set aside (lane mailhead): kept, and the
tool's next receive goes on past it."""

from __future__ import annotations

from typing import Any

import pytest

from broker import Kernel
from broker.errors import InvalidArgument
from tests.sandboxes.test_wasm import cache_dir, register, start, syscall_tool, wasm, wk  # noqa: F401

RECEIVE = syscall_tool("proc.receive", "(call $mp_map (i32.const 0))")


def _outcomes(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [r["detail"] for r in kernel.audit(pid)
            if r["syscall"] == "proc.receive" and "ok" in r["detail"]]


async def test_a_message_a_wasm_tool_cannot_be_sent_is_not_recorded_ok(
        wk: Kernel) -> None:  # noqa: F811
    pid = await start(wk)
    await register(wk, pid, "take", RECEIVE)
    big = {"big": "x" * (5 << 20)}  # (within Deno's 16 MiB frame: only the WASM bound stops it)
    wk.send_message(None, pid, big)
    with pytest.raises(InvalidArgument, match="cannot be sent to a tool") as got:
        await wk.call_tool(pid, "take", {})
    outcomes = _outcomes(wk, pid)
    assert outcomes and outcomes[-1]["ok"] is False, (got.value, outcomes[-1])
    assert outcomes[-1].get("error") == "INVALID_ARGUMENT"
    assert "result" not in outcomes[-1]  # (the body the tool never got is not recorded)
    # The big one stays, set aside (the host sees it; nothing acknowledged is lost), and the
    # tool's next receive is handed the message behind it, recorded so.
    wk.send_message(None, pid, {"small": "y"})
    assert wk.store.mailbox_size(pid) == 2
    got_small = await wk.call_tool(pid, "take", {})
    assert got_small["body"] == {"small": "y"}
    [aside] = wk.messages_set_aside(pid)
    assert aside["body"] == big and aside["set_aside_by"] == outcomes[-1]["intent"]
    assert [o["ok"] for o in _outcomes(wk, pid)] == [False, True]
    assert wk.verify_audit()[1] == []
