"""Red team (session 16): a process's deferred end (`Exits.finish`) that the store refuses for
good is set aside (`broker.store.refusals`): nothing of it is durable. Whatever lands it
while it waits (here a kill; a pause, a parent's end: `Exits.land`) must not show it either
(invariant 4: an exit and its result reach nobody before they are durable), nor lose the kill:
the store must not keep as live (resumed on reopen) a process a broker showed ended."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, CallTool, Exit, Kernel, Observation

SECRET = {"secret": "shown only once durable"}
KEPT = "a line batched before the end"


class Planner:
    def __init__(self, kernel: Kernel, steps: int, poison: bool) -> None:
        self.kernel, self.steps, self.poison = kernel, steps, poison
        self.pid: int | None = None

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        if len(history) < self.steps:
            return CallTool("now", {})
        if self.poison:
            assert self.pid is not None
            # A batched event, carried by this process's deferred end (which the store
            # refuses: `poison_ends`): stored all the same, the end alone set aside.
            self.kernel.events.emit_batched(self.pid, "log", text=KEPT)
            return Exit(0, SECRET)
        return Exit(0)


def poison_ends(kernel: Kernel, pid: int) -> None:
    """Process `pid`'s deferred end holds a value the store refuses for good (a stand-in for
    any value that gets past the checks before it: a lone surrogate in its row's reason)."""
    end_later = kernel.store.end_later

    def poisoned(of: int, process: dict[str, Any], *rest: Any) -> Any:
        if of == pid:
            process = {**process, "reason": "exit\ud800"}
        return end_later(of, process, *rest)

    kernel.store.end_later = poisoned  # type: ignore[method-assign]


@pytest.mark.parametrize("mover", ["kill", "pause"])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_set_aside_end_is_never_shown_by_a_move_that_lands_it(
        db_path: Path, tmp_path: Path, backend: str, mover: str,
        request: pytest.FixtureRequest) -> None:
    """A kill ends it killed; after a pause it ends with the refusal (exit 1), as a process
    whose own write failed: never shown exited as it asked, nor left live with no task."""
    store = db_path if backend == "sqlite" else request.getfixturevalue("pg_database")
    async with Kernel.open(store, fs_root=tmp_path / "fs") as kernel:
        await kernel.register_image(AgentImage("ticker", tools=("now",),
                                               needs=("clock:*:read",)))
        victim, other = Planner(kernel, 2, True), Planner(kernel, 30, False)
        victim.pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=victim)
        poison_ends(kernel, victim.pid)
        other.pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=other)
        proc = kernel.process(victim.pid)
        with trio.fail_after(30):
            while proc.exiting is None and proc.alive:  # its end deferred, for a group commit
                await trio.sleep(0)
        # On a loaded machine the group commit's timer may land it first: then the refusal
        # ended it (exit 1), and nothing was left for the move to land.
        landed_first = proc.exiting is None
        if not landed_first:
            assert not proc.exiting.committed
            if mover == "kill":  # each lands it: commits what waits first
                kernel.kill(victim.pid, "killed by the host")
            else:
                kernel.pause(victim.pid)
        shown = await kernel.wait(victim.pid, timeout=30)
        assert (await kernel.wait(other.pid, timeout=60))["exit_code"] == 0
        stored = kernel.store.get_process(victim.pid)
        assert shown["result"] != SECRET and stored["result"] != SECRET
        if landed_first:
            mover = "pause"  # (what the refusal alone leaves: exited, exit 1)
        ended = "killed" if mover == "kill" else "exited"
        assert shown["state"] == stored["state"] == ended, (shown, stored)
        assert shown["exit_code"] == stored["exit_code"] == (None if mover == "kill" else 1)
        assert any(e["data"] == {"text": KEPT} for e in kernel.store.events(pid=victim.pid))
    async with Kernel.open(store, fs_root=tmp_path / "fs") as kernel:
        assert kernel.store.get_process(victim.pid)["state"] == ended
        assert kernel.store.audit_problems(public_key=kernel.store.signer)[1] == []
