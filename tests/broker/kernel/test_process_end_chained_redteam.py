"""Red team on ends that wrote no chained record, by whoever can write the database but holds
no key. A process that ended by its planner's own exit (alone, or group-committed beside
others), by a step that failed, by a spent budget or by a time limit had only its row say
so: a writer who set that row back to runnable had it served again at the next open, with
its grants. Now every end writes `proc.end` with its row (`broker.store.ends`): the open ends
it again, records that once, and a neighbour runs on; a process whose end was not written
(the store gave up on it) is no end, and resumes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from broker import Budget, CallTool, Exit, Kernel, ScriptedPlanner
from broker.store.ends import RESULT_DIGEST, result_digest
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_process_revived_redteam import REVIVE, stays_dead
from tests.conftest import open_image

fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)
READ = CallTool("read_file", {"path": "/data/pub/f"})


class _Failing:
    """A planner that reads once, then raises (its process ends with exit 1)."""

    def __init__(self) -> None:
        self.steps = 0

    async def next_action(self, *_: object) -> CallTool:
        self.steps += 1
        if self.steps > 1:
            raise RuntimeError("the planner broke")
        return READ


async def _exit_alone(kernel: Kernel) -> int:
    await open_image(kernel, "ender")
    return kernel.spawn("ender", caps=[PUB], planner=ScriptedPlanner([READ, Exit(5)]))


async def _exit_grouped(kernel: Kernel) -> int:
    """Others step beside it: its exit rides on the group commit (`broker.kernel.exiting`)."""
    await open_image(kernel, "ender")
    for _ in range(4):
        kernel.spawn("ender", caps=[PUB], planner=ScriptedPlanner([READ] * 6))
    return kernel.spawn("ender", caps=[PUB], planner=ScriptedPlanner([READ, READ]))


async def _planner_failed(kernel: Kernel) -> int:
    await open_image(kernel, "ender")
    return kernel.spawn("ender", caps=[PUB], planner=_Failing())


async def _budget_spent(kernel: Kernel) -> int:
    await open_image(kernel, "ender", budget=Budget(steps=1))
    return kernel.spawn("ender", caps=[PUB], planner=ScriptedPlanner([READ] * 3))


async def _wall_time(kernel: Kernel) -> int:
    await open_image(kernel, "ender", budget=Budget(wall_seconds=0.2))
    return kernel.spawn("ender", caps=[PUB, "clock:*:sleep"],
                        planner=ScriptedPlanner([CallTool("sleep", {"seconds": 60})]))


ENDS: dict[str, tuple[Callable[[Kernel], Awaitable[int]], str]] = {
    "planner's exit": (_exit_alone, "exited"), "grouped exit": (_exit_grouped, "exited"),
    "failed step": (_planner_failed, "exited"), "spent budget": (_budget_spent, "killed"),
    "wall time": (_wall_time, "killed")}


@pytest.mark.parametrize("end", list(ENDS))
async def test_a_process_that_ended_unrecorded_set_runnable_again_stays_dead(
        store_at: Path | str, fs_root: Path, end: str) -> None:
    start, state = ENDS[end]
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        neighbour = kernel.spawn("agent", caps=[PUB])
        pid = await start(kernel)
        with trio.fail_after(30):
            assert (await kernel.wait(pid))["state"] == state
        ends = [r for r in kernel.audit() if r["syscall"] == "proc.end" and r["pid"] == pid]
        assert [r["detail"]["state"] for r in ends] == [state]  # the audit a user expects
    edit(store_at, REVIVE, (pid,))
    await stays_dead(store_at, fs_root, pid, neighbour)


async def test_an_exit_records_its_code(store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        pid = await _exit_alone(kernel)
        with trio.fail_after(30):
            await kernel.wait(pid)
        [end] = [r for r in kernel.audit() if r["syscall"] == "proc.end"]
        assert (end["pid"], end["phase"], end["detail"]) == (
            pid, "admin", {"state": "exited", "code": 5,
                           RESULT_DIGEST: result_digest(None)})  # (its result binds too)
        assert kernel.verify_audit()[1] == []
