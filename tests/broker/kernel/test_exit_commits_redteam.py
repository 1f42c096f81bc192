"""Red team of the grouped exit (`broker.kernel.exiting`): what else can happen to a process
while its own exit waits for the group commit — an operator's control, the commit failing, the
kernel closing, a crash — and what a parent, a follower or the audit chain sees of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, CallTool, Conflict, Exit, Kernel, ScriptedPlanner
from broker.kernel.process import AgentProcess
from sandboxes.deno import DenoSandbox
from tests.broker.kernel.crashing import Crash, crash_after
from tests.broker.kernel.test_exit_commits import _spawn_tickers
from tests.conftest import open_image


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


async def _waited_beside(kernel: Kernel, odd: int, neighbours: int
                         ) -> tuple[dict[str, Any], list[int]]:
    """`odd`'s end, waited for while `neighbours` tickers step beside it (each must exit),
    and their pids."""
    others = [kernel.spawn("ticker", caps=["clock:*:read"], planner=ScriptedPlanner(
        [CallTool("now", {})] * 6)) for _ in range(neighbours)]
    with trio.fail_after(30):
        status = await kernel.wait(odd)
        for pid in others:
            assert (await kernel.wait(pid))["state"] == "exited"
    return status, others


@pytest.mark.parametrize("neighbours", [0, 1])
async def test_a_lone_surrogate_in_an_exit_result_does_not_wedge_the_store(
        kernel: Kernel, neighbours: int) -> None:
    """A planner exits with a result no UTF-8 encodes (a scripted or embedder's planner can
    emit one, and JSON from a model can escape one). With a neighbour stepping beside it, its
    end is a deferred write: it must not wait there for ever, failing every later commit of
    every process (it did: the broker died). Alone, its end must not be shown (`wait`) while
    the store, which refused it, still says running (it was). It exits, its result made
    storable (U+FFFD for the surrogate) in memory as on disk, and a neighbour goes on."""
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))
    odd = kernel.spawn("ticker", caps=["clock:*:read"], planner=ScriptedPlanner(
        [CallTool("now", {}), Exit(0, {"said": "lone \ud800"})]))
    status, others = await _waited_beside(kernel, odd, neighbours)
    assert status["state"] == "exited" and status["exit_code"] == 0, status
    assert status["result"] == {"said": "lone \ufffd"}
    stored = kernel.store.get_process(odd)
    assert (stored["state"], stored["result"]) == ("exited", {"said": "lone \ufffd"})
    for pid in others:
        assert kernel.store.get_process(pid)["state"] == "exited"
        assert len(kernel.process(pid).history) == 6
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("neighbours", [0, 1])
async def test_an_exit_code_the_store_cannot_hold_does_not_wedge_the_store(
        kernel: Kernel, neighbours: int) -> None:
    """A planner exits with a code no SQLite INTEGER holds (an image's scripted planner, which
    any process that may register images can give a child: `{"exit": 2**70}`). With a
    neighbour stepping beside it, its end was a deferred write that failed every later
    commit of every process (OverflowError): the broker died, and after a restart the child
    exits the same way again. Alone, memory said exited while the store said running. Its
    exit is refused as bad input instead (exit 1, `INVALID_ARGUMENT`), before anything is
    written, and a neighbour goes on."""
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",),
                                           planner={"kind": "scripted", "actions": [
                                               {"tool": "now", "args": {}},
                                               {"exit": 2**70}]}))
    odd = kernel.spawn("ticker", caps=["clock:*:read"])
    status, others = await _waited_beside(kernel, odd, neighbours)
    assert (status["state"], status["exit_code"]) == ("exited", 1), status
    assert status["result"]["error"] == "INVALID_ARGUMENT"
    stored = kernel.store.get_process(odd)
    assert (stored["state"], stored["exit_code"]) == ("exited", 1)
    for pid in others:
        assert kernel.store.get_process(pid)["state"] == "exited"
        assert len(kernel.process(pid).history) == 6
    assert kernel.verify_audit()[1] == []


QUIT = ("export default async function run(args: unknown, libos: any) "
        "{ await libos.proc.exit(3, 'asked'); return 'bye'; }")


async def test_an_exit_a_tool_asked_for_survives_a_crash_before_its_commit(
        db_path: Path) -> None:
    """A tool's `proc.exit` returned ok (its outcome, and the step's, are durable); the
    process's end waits for the group commit, and the broker dies before it. After the
    restart the process must still exit as asked, not go on to act (the step's recorded
    outcome is handed over, but the exit request lived only in the checkpoint that was
    lost with the exit)."""
    undo = crash_after("end_later", lambda _, pid, *__, **___: pid == 1)

    async def start(kernel: Kernel) -> None:
        await open_image(kernel, "quitter", needs=("tool:*:register,call", "clock:*:read"),
                         tools=("register_tool", "now"), planner={"kind": "scripted", "actions": [
                             {"tool": "register_tool", "args": {"name": "quit", "lang": "ts",
                                                                "source": QUIT}},
                             {"tool": "quit", "args": {}},
                             {"tool": "now", "args": {}}, {"tool": "now", "args": {}}]})
        await open_image(kernel, "ticker", needs=("clock:*:read",), tools=("now",),
                         planner={"kind": "scripted",
                                  # still stepping when the quitter's cold Deno has run
                                  # its tool on a loaded machine: its exit is grouped
                                  "actions": [{"tool": "now", "args": {}}] * 20_000})
        kernel.spawn("quitter", caps=["tool:*:register,call", "clock:*:read"])
        kernel.spawn("ticker", caps=["clock:*:read"])

    try:
        with pytest.raises(BaseException) as caught:  # trio wraps it in a group
            async with DenoSandbox(spares=0) as deno, Kernel.open(
                    db_path, sandboxes=[deno]) as kernel:
                await start(kernel)
                await trio.sleep(30)
    finally:
        undo()
    assert caught.group_contains(Crash) if isinstance(caught.value, BaseExceptionGroup) \
        else isinstance(caught.value, Crash), caught.value
    async with Kernel.open(db_path) as kernel:
        with trio.fail_after(30):
            status = await kernel.wait(1)
        assert (status["state"], status["exit_code"], status["result"]) == (
            "exited", 3, "asked"), status
        nows = [r for r in kernel.audit(1) if r["syscall"] == "clock.now"]
        assert nows == []  # nothing after the step that asked to exit
