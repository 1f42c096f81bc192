"""A pending step's own call, after a restart, is the step's, never a host's call made since
its checkpoint (`step_record.step_call`).

The broker stops with a step's checkpoint committed and nothing of its call recorded (its
`tool.call` record is held until the tool's first record, and the checkpoint goes with
whatever commits first: another process's record). The next open finds nothing the step did:
it is to run again. If the process does not run then (its planner is not rebuilt, or it is
paused), a host's call of one of its tools (`Kernel.call_tool`, an MCP client's) is recorded
after that checkpoint, and the open after took it for the step's own: the planner was handed
the host's result as its step's, and the step itself never ran."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from broker import CallTool, Exit, Kernel
from broker.kernel import recovery
from broker.planner import Action, Observation
from tests.broker.kernel.test_pending_out_of_shape_rt29 import _Waits
from tests.conftest import open_image


class _Ends:
    def __init__(self) -> None:
        self.seen: list[Observation] = []

    async def next_action(self, history: Sequence[Observation]) -> Action:
        self.seen = list(history)
        return Exit(0, "done")


STEP = CallTool("write_file", {"path": "/step.txt", "data": "the step's"})


async def test_a_host_call_after_a_pending_steps_checkpoint_is_not_the_steps(
        db_path: Path, tmp_path: Path) -> None:
    fs = tmp_path / "fs"
    fs.mkdir()
    (fs / "host.txt").write_text("the host's")
    async with Kernel.open(db_path, fs_root=fs) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/**:read,write"], planner=_Waits())
        proc = kernel.process(pid)
        # The step's checkpoint, committed; the broker stops before its call is recorded.
        recovery.save(kernel.store, proc, len(proc.history), pending=STEP)
    async with Kernel.open(db_path, fs_root=fs) as kernel:  # no planner: it waits
        assert kernel.process(pid).rerun == STEP
        got = await kernel.call_tool(pid, "read_file", {"path": "/host.txt"})
        assert got == "the host's"
    planner = _Ends()
    async with Kernel.open(db_path, fs_root=fs, planners=lambda image, p: planner) as kernel:
        assert (await kernel.wait(pid))["exit_code"] == 0
    [step] = planner.seen
    assert step.action == STEP and step.error is None
    assert step.result == len("the step's")  # its own write's, not the host's read
    assert (fs / "step.txt").read_text() == "the step's"  # the step ran


