"""A deferred write made for a process that the store refuses for good (here one put in the
store's queue as a planner of that process acts: no hostile value reaches it from a planner
or a tool any more, `tests/broker/store/test_poisoned_deferred_write.py`) is set aside: that
process ends with the typed error (exit 1), as for a failed write of its own; the others run
on to their own end, the broker's writes go on, and the audit verifies. (Before: every
later commit failed on it, each process's end with them, and the kernel's close.)"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from broker import AgentImage, CallTool, Exit, Kernel, Observation

STEPS = 4


class Ticker:
    def __init__(self, kernel: Kernel, poison_at: int | None) -> None:
        self.kernel, self.poison_at = kernel, poison_at
        self.pid: int | None = None

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        if len(history) == self.poison_at:
            assert self.pid is not None
            self.kernel.store.update_process(self.pid, defer=True, exit_code=2**70)
        return CallTool("now", {}) if len(history) < STEPS else Exit(0)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_refused_write_ends_its_process_and_the_others_go_on(
        db_path: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    store = db_path if backend == "sqlite" else request.getfixturevalue("pg_database")
    async with Kernel.open(store, fs_root=tmp_path / "fs") as kernel:
        await kernel.register_image(AgentImage("ticker", tools=("now",),
                                               needs=("clock:*:read",)))
        planners = [Ticker(kernel, 2 if n == 0 else None) for n in range(3)]
        for planner in planners:
            planner.pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=planner)
        statuses = [await kernel.wait(p.pid) for p in planners if p.pid is not None]
        victim, *others = statuses
        assert victim["state"] == "exited" and victim["exit_code"] == 1, victim
        assert victim["result"]["error"] == "INVALID_ARGUMENT", victim
        assert all(s["state"] == "exited" and s["exit_code"] == 0 for s in others), others
        assert kernel.store.audit_problems(public_key=kernel.store.signer)[1] == []
    async with Kernel.open(store, fs_root=tmp_path / "fs") as kernel:
        assert kernel.store.audit_problems(public_key=kernel.store.signer)[1] == []
