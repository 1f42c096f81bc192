"""Red team of the grouped exit (`broker.kernel.exiting`): what else can happen to a process
while its own exit waits for the group commit — an operator's control, the commit failing, the
kernel closing, a crash — and what a parent, a follower or the audit chain sees of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import Conflict, Kernel
from broker.kernel.process import AgentProcess
from tests.broker.kernel.test_exit_commits import _spawn_tickers


def _during_exit(kernel: Kernel, pids: list[int], act: Any) -> list[AgentProcess]:
    """Run `act(proc)` once, on the first process found waiting for its exit's commit (from
    a task about to wait for a group commit, as any other process's syscall would)."""
    group = kernel.dispatcher.group
    real = group.durable
    hit: list[AgentProcess] = []

    async def durable() -> None:
        proc = next((kernel.process(p) for p in pids if kernel.process(p).exiting), None)
        if proc is not None and not hit:
            hit.append(proc)
            act(proc)
        await real()

    group.durable = durable  # type: ignore[method-assign]
    return hit


async def test_an_operators_pause_while_the_exit_waits_is_audited_as_refused(
        kernel: Kernel, db_path: Path) -> None:
    """The operator pauses a process whose exit waits for its commit: the exit came first, so
    the pause is refused (Conflict) and audited as refused, exactly as a pause that came
    after the exit's commit is; never an `admin` record of a pause that was not done."""
    pids = await _spawn_tickers(kernel, 3)
    refused: list[Exception] = []

    def pause(proc: AgentProcess) -> None:
        with pytest.raises(Conflict) as caught:
            kernel.pause(proc.pid)
        refused.append(caught.value)

    hit = _during_exit(kernel, pids, pause)
    for pid in pids:
        await kernel.wait(pid)
    [proc] = hit
    assert len(refused) == 1 and proc.state.value == "exited"
    [control] = [r for r in kernel.audit(proc.pid) if r["syscall"] == "proc.signal"]
    assert control["phase"] == "rejected", control
    assert control["detail"]["error"] == "CONFLICT"
    assert not proc.holds and kernel.store.holds_of(proc.pid) == set()
    assert kernel.verify_audit()[1] == []
