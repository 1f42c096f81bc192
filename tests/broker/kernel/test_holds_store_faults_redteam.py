"""Red team (rt/holes) of 1891321 (a hold written before the broker's memory changes): the
hold's row and the process's state are two writes. When the hold is stored and the move
(runnable -> paused, or back) fails, the host is told Conflict, and a retry returned early
(the hold already, or no longer, in memory) without making the move: a pause that never
paused (the process goes on calling tools, held in the store only), a resume that never
resumed (paused in memory, no hold anywhere). Real SQLite made to fail by a trigger."""

from __future__ import annotations

import pytest

from broker import Conflict, Kernel
from broker.lifecycle import State
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_host_store_faults import _sleeper_and_host


async def test_a_pause_whose_move_failed_pauses_when_retried(kernel: Kernel,
                                                             fault: Fault) -> None:
    fault.install(updates=("processes",))
    _, host = await _sleeper_and_host(kernel)
    assert kernel.process(host).state == State.RUNNABLE
    fault.set(True)
    with pytest.raises(Conflict):
        kernel.pause(host)
    fault.set(False)
    kernel.pause(host)  # the store healed: the same act works
    proc = kernel.process(host)
    assert proc.state == State.PAUSED and kernel.store.holds_of(host) == proc.holds != set()


async def test_a_resume_whose_move_failed_resumes_when_retried(kernel: Kernel,
                                                               fault: Fault) -> None:
    fault.install(updates=("processes",))
    _, host = await _sleeper_and_host(kernel)
    kernel.pause(host)
    assert kernel.process(host).state == State.PAUSED
    fault.set(True)
    with pytest.raises(Conflict):
        kernel.resume(host)
    fault.set(False)
    kernel.resume(host)  # the store healed: the same act works
    proc = kernel.process(host)
    assert proc.state == State.RUNNABLE and kernel.store.holds_of(host) == proc.holds == set()
