"""Red team (merged tree): `kernel.host_tool` is a host verb that writes the store (its
`admin` record) but was not typed: under a failing store the host got SQLite's own error,
and the tool stood registered in memory with no record of it (registered before its record:
an authority the chain never shows). Fixed: its record first, then registered; the verb typed."""

from __future__ import annotations

import pytest

from broker import Conflict, Kernel
from broker.kernel.host_tools import REGISTER_RECORD
from tests.broker.kernel.faulty_store import Fault


def ping(text: str) -> str:
    """Say it back."""
    return text


async def test_a_host_tool_whose_record_fails_is_a_conflict_and_not_registered(
        kernel: Kernel, fault: Fault) -> None:
    fault.install("audit")
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        kernel.host_tool(ping, kind="echo", right="say")
    fault.set(False)
    assert "ping" not in kernel.host_tools
    assert [r for r in kernel.audit() if r["syscall"] == REGISTER_RECORD] == []
    kernel.host_tool(ping, kind="echo", right="say")  # the store healed: registered, recorded
    assert "ping" in kernel.host_tools
    assert [r["phase"] for r in kernel.audit() if r["syscall"] == REGISTER_RECORD] == ["admin"]
    assert kernel.verify_audit()[1] == []


async def test_the_decorator_form_is_typed_too(kernel: Kernel, fault: Fault) -> None:
    fault.install("audit")
    register = kernel.host_tool(kind="echo", right="say")
    fault.set(True)
    with pytest.raises(Conflict, match="disk full"):
        register(ping)
    fault.set(False)
    assert "ping" not in kernel.host_tools
    register(ping)
    assert "ping" in kernel.host_tools and kernel.verify_audit()[1] == []
