"""Red team 6: `Kernel.kill` with a reason holding a lone surrogate (text an embedder took
from a file name or argv: `"\\udcff"`-style escapes). The kill's record was written, then
the process rows' update raised an untyped UnicodeEncodeError: the process kept running in
this broker while the chain said it was killed (the next open killed it). Severity: low-
medium (an operator's kill that does not kill, untyped, invariant 18). Now the reason is
kept as the store can keep it (U+FFFD) and the kill goes through: a kill is never refused
for the words that explain it."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import AgentImage, Kernel


@pytest.mark.parametrize("reason", ["bad \ud800 reason", "argv \udcff"])
async def test_a_kill_whose_reason_holds_a_lone_surrogate_still_kills(
        tmp_path: Path, reason: str) -> None:
    async with Kernel.open(tmp_path / "db") as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        pid = kernel.spawn("a")
        neighbour = kernel.spawn("a")
        kernel.kill(pid, reason)
        assert kernel.process_info(pid)["state"] == "killed"
        assert kernel.process_info(neighbour)["state"] == "runnable"
        assert [r["detail"]["signal"] for r in kernel.audit(pid)
                if r["syscall"] == "proc.signal"] == ["kill"]
        assert "\ufffd" in (await kernel.wait(pid))["reason"]
        assert kernel.verify_audit()[1] == []
    async with Kernel.open(tmp_path / "db") as kernel:
        assert kernel.process_info(pid)["state"] == "killed"
        assert kernel.process_info(neighbour)["state"] == "runnable"
