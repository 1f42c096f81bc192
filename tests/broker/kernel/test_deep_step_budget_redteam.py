"""Red team: a planner's step whose arguments nest too deep to checkpoint is refused before
it acts (test_deep_arguments.py), but that refusal skipped the dispatcher's count: every
other refused attempt (bad arguments, an unknown tool, text that is not Unicode) is charged
against the process's `syscalls` budget, so a planner looping on too-deep steps wrote
`rejected` records without end past a syscalls budget meant to stop it. It is charged as
the dispatcher charges it: the attempt that crosses the budget kills the process. Both
backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel
from broker.kernel.image import AgentImage, Budget
from broker.planner import CallTool, Exit, Observation
from tests.broker.kernel.test_deep_arguments import nested, put

CAPS = ["obj:*:read,write"]
ATTEMPTS = 6


class _Looping:
    """A planner that calls `ATTEMPTS` times with the arguments it is given, then exits."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.args, self.left = args, ATTEMPTS

    async def next_action(self, history: list[Observation]) -> CallTool | Exit:
        if self.left:
            self.left -= 1
            return CallTool("put_object", self.args)
        return Exit(0, len(history))


@pytest.mark.parametrize("args", [put(nested(5_000)), put("\udc00")],
                         ids=["too-deep", "lone-surrogate"])
async def test_a_refused_step_is_charged_to_the_syscalls_budget(
        store_at: Path | str, tmp_path: Path, args: dict[str, Any]) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs",
                           planners=lambda image, pid: _Looping(args)) as kernel:
        await kernel.register_image(AgentImage("a", tools=("put_object",), needs=tuple(CAPS),
                                               budget=Budget(syscalls=2)))
        pid = kernel.spawn("a", caps=CAPS)
        with trio.fail_after(15):
            status = await kernel.wait(pid)
        assert status["state"] == "killed", status
        assert "syscalls budget (2) spent" in str(status), status
        rejected = [r for r in kernel.audit(pid) if r["phase"] == "rejected"]
        assert len(rejected) == 3  # two charged, the third crossing the budget
        assert kernel.verify_audit()[1] == []
