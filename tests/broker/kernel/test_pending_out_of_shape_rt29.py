"""Red team 29: a planner's step out of shape (a model's `CallTool(7)`, a name that is a
list) is checkpointed as pending before the dispatcher refuses it, like any step. A broker
that stopped with that checkpoint its latest (a crash inside the group commit's window) read
it back as "edited in the database": the process could never be loaded again, and a fork of
it raised `not an action`. Now the open takes it back and the step runs again, refused as
its step's error (nothing of it ran), and the process goes on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import CallTool, Exit, Kernel
from broker.kernel import recovery
from broker.planner import Action, Observation
from tests.conftest import open_image


class _Waits:
    async def next_action(self, history: Sequence[Observation]) -> Action:
        await trio.sleep_forever()
        raise AssertionError


class _Ends:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def next_action(self, history: Sequence[Observation]) -> Action:
        self.seen = [(o.action, o.error and o.error["code"]) for o in history]
        return Exit(0, "done")


@pytest.mark.parametrize("name", [7, ["now"]])
async def test_a_pending_step_out_of_shape_runs_again_refused(db_path: Path, name: Any
                                                               ) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["clock:*:read"], planner=_Waits())
        proc = kernel.process(pid)
        # As the scheduler's `_step` checkpoints a step before it acts (then the broker
        # stopped: the refusal's observation, committed with the next write, never came).
        recovery.save(kernel.store, proc, len(proc.history), pending=CallTool(name))
        # A fork from that checkpoint runs the step first, as the source would have.
        forked = _Ends()
        child = kernel.fork(pid, planner=forked)
        assert (await kernel.wait(child))["exit_code"] == 0
        assert forked.seen == [(CallTool(name), "INVALID_ARGUMENT")]
    planner = _Ends()
    async with Kernel.open(db_path, planners=lambda image, pid: planner) as kernel:
        assert (await kernel.wait(pid))["exit_code"] == 0
        assert planner.seen == [(CallTool(name), "INVALID_ARGUMENT")]
