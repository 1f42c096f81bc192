"""A host tool call cut off by a crash: a read-only tool may run again; any other is reported
`outcome unknown` to the planner and never silently repeated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, Kernel
from broker.store import AuditRecord
from tests.broker.kernel.crashing import Crash, crash_after
from tests.broker.kernel.host_fixtures import Outbox, count_mail, send_email

PLANNED = {"kind": "scripted", "actions": [
    {"tool": "send_email", "args": {"to": "bob@example.com", "subject": "hi"}},
    {"tool": "count_mail", "args": {"folder": "sent"}}]}


def _intent_of(syscall: str) -> Any:
    def when(_: Any, record: AuditRecord, **__: Any) -> bool:
        return record.phase == "intent" and record.syscall == syscall
    return when


async def _crash_at(db: Path, outbox: Outbox, syscall: str, actions: list[Any]) -> None:
    """Run a planned process until the broker dies right after `syscall`'s intent is durable
    (before the function ran), as after a SIGKILL."""
    undo = crash_after("append_audit", _intent_of(syscall))
    try:
        with pytest.raises(BaseException) as caught:
            async with Kernel.open(db, host_tools=[send_email, count_mail],
                                   host_state=outbox) as kernel:
                await kernel.register_image(AgentImage(
                    "mailer", tools=("send_email", "count_mail"), needs=["email:*:send,read"],
                    planner={"kind": "scripted", "actions": actions}))
                kernel.spawn("mailer", caps=["email:*:send,read"])
                await trio.sleep(10)
        assert caught.group_contains(Crash) if isinstance(caught.value, BaseExceptionGroup) \
            else isinstance(caught.value, Crash)
    finally:
        undo()


async def test_a_cut_off_call_of_a_tool_that_acts_is_outcome_unknown(db_path: Path) -> None:
    outbox = Outbox()
    await _crash_at(db_path, outbox, "host.send_email", PLANNED["actions"])
    assert outbox.sent == []  # the broker died after the intent, before the function ran
    async with Kernel.open(db_path, host_tools=[send_email, count_mail],
                           host_state=outbox) as kernel:
        status = await kernel.wait(1, timeout=10)
        assert status["state"] == "exited"
        first, second = kernel.process(1).history
        assert first.error is not None and first.error["code"] == "CANCELLED"
        assert "outcome unknown" in first.error["message"]
        assert "host.send_email" in first.error["message"]
        assert outbox.sent == []  # not silently repeated
        assert second.result == 0  # the next step ran
        unknown = [r for r in kernel.audit(1) if r["syscall"] == "host.send_email"
                   and r["phase"] == "outcome"]
        assert [r["detail"].get("unknown") for r in unknown] == [True]
        assert kernel.verify_audit()[1] == []


async def test_a_cut_off_call_of_a_read_only_tool_runs_again(db_path: Path) -> None:
    outbox = Outbox()
    actions = [{"tool": "count_mail", "args": {"folder": "sent"}}]
    await _crash_at(db_path, outbox, "host.count_mail", actions)
    assert outbox.calls == []
    async with Kernel.open(db_path, host_tools=[send_email, count_mail],
                           host_state=outbox) as kernel:
        status = await kernel.wait(1, timeout=10)
        assert status["state"] == "exited"
        [step] = kernel.process(1).history
        assert step.error is None and step.result == 0
        assert len(outbox.calls) == 1  # run again, once, by the new broker
        intents = [r for r in kernel.audit(1) if r["syscall"] == "host.count_mail"
                   and r["phase"] == "intent"]
        assert len(intents) == 2 and all(r["detail"]["read_only"] for r in intents)
