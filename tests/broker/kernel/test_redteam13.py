"""Red team 13: shared images, one-write spawns, exit results kept as they are (f808a82)."""

from __future__ import annotations

import pytest

from broker import AgentImage, CallTool, Exit, Kernel, ScriptedPlanner
from tests.broker.kernel.test_exit_commits_redteam import _waited_beside


@pytest.mark.parametrize("neighbours", [0, 1])
async def test_an_int_exit_result_too_long_for_text_does_not_wedge_the_store(
        kernel: Kernel, neighbours: int) -> None:
    """MEDIUM (f808a82): an int exit result skipped the check that the store can encode it,
    but an int of more digits than Python turns into text (10**5000) cannot be: with a
    neighbour stepping, its end was a deferred write that failed every later commit, and the
    neighbour's planner died of the other's ValueError (an embedder's or host planner's
    result kills its neighbours). It is refused before anything is written, as before."""
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    odd = kernel.spawn("ticker", caps=["clock:*:read"], planner=ScriptedPlanner(
        [CallTool("now", {}), Exit(0, 10**5000)]))
    status, others = await _waited_beside(kernel, odd, neighbours)
    assert (status["state"], status["exit_code"]) == ("exited", 1), status
    assert status["result"]["error"] == "INVALID_ARGUMENT"
    for pid in others:
        assert kernel.store.get_process(pid)["state"] == "exited"
        assert kernel.store.get_process(pid)["exit_code"] == 0
        assert len(kernel.process(pid).history) == 6
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("result", [True, 0, -(1 << 63), (1 << 63) - 1, 1 << 70, None])
async def test_plain_exit_results_are_kept(kernel: Kernel, result: object) -> None:
    """The fix keeps the fast path's results as they were (an int past 64 bits goes the
    whole way and is kept too)."""
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=ScriptedPlanner(
        [Exit(0, result)]))
    status = await kernel.wait(pid)
    assert status["exit_code"] == 0 and status["result"] == result
    assert type(kernel.store.get_process(pid)["result"]) is type(result)
