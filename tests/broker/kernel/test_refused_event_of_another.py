"""Red team (session 16): tool log lines are batched (`EventBus.emit_batched`), and the batch
is written with the next event, by the periodic flush, or by the deferred end of whichever
process ends next (`Exits.finish`). A line the store refuses for good, batched for process Q,
used to fail the end of another process P that carried it (P ended with the refusal, exit 1,
Q ran on untold) and lose every line beside it; written at once, it failed the flush for
ever, and every event after it. Now only Q's line is set aside, Q is told (it ends with the
typed error, as for a write of its own the store refused), and the others are kept."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from broker import AgentImage, CallTool, Exit, Kernel, Observation

BAD_KIND = "log\ud800"  # a line no store takes (a stand-in for any value past the checks)


class Ticker:
    """Ticks `steps` times, then exits; logs `batch` (pid, kind, text) at step `batch_at`
    (default: just before its exit)."""

    def __init__(self, kernel: Kernel, steps: int, batch_at: int | None = None) -> None:
        self.kernel, self.steps = kernel, steps
        self.batch_at = steps if batch_at is None else batch_at
        self.batch: list[tuple[int, str, str]] = []

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        if len(history) == self.batch_at:
            for pid, kind, text in self.batch:
                self.kernel.events.emit_batched(pid, kind, text=text)
        if len(history) < self.steps:
            return CallTool("now", {})
        return Exit(0, {"done": True})


async def _image(kernel: Kernel) -> None:
    await kernel.register_image(AgentImage("ticker", tools=("now",), needs=("clock:*:read",)))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_refused_line_ends_its_own_process_not_the_one_whose_end_carried_it(
        db_path: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    store = db_path if backend == "sqlite" else request.getfixturevalue("pg_database")
    async with Kernel.open(store, fs_root=tmp_path / "fs") as kernel:
        await _image(kernel)
        ender, offender = Ticker(kernel, 2), Ticker(kernel, 10_000)
        offender_pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=offender)
        ender_pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=ender)
        ender.batch = [(offender_pid, "log", "before"), (offender_pid, BAD_KIND, "bad"),
                       (ender_pid, "log", "own"), (offender_pid, "log", "after")]
        async with kernel.events.follow() as seen:
            ended = await kernel.wait(ender_pid, timeout=60)
            told = await kernel.wait(offender_pid, timeout=60)
            followed = []
            with trio.move_on_after(1):
                async for event in seen:
                    followed.append(event)
        assert ended["state"] == "exited" and ended["exit_code"] == 0, ended
        assert ended["result"] == {"done": True}
        assert told["state"] == "exited" and told["exit_code"] == 1, told
        assert told["result"]["error"] == "INVALID_ARGUMENT", told
        lines = [(e["pid"], e["data"]["text"]) for e in kernel.store.events()
                 if e["kind"] == "log"]
        expected = [(offender_pid, "before"), (ender_pid, "own"), (offender_pid, "after")]
        assert lines == expected
        assert [(e["pid"], e["data"]["text"]) for e in followed if e["kind"] == "log"] == expected
        assert kernel.store.audit_problems(public_key=kernel.store.signer)[1] == []


async def test_a_refused_line_written_at_once_stops_no_later_event(
        db_path: Path, tmp_path: Path) -> None:
    """One process alone (no end deferred): the batch is written at once (by the next event
    or the periodic flush). Its refused line is set aside, the process told at its next step
    (it ends with the typed error); the line beside it, and every later event, are kept."""
    async with Kernel.open(db_path, fs_root=tmp_path / "fs") as kernel:
        await _image(kernel)
        offender = Ticker(kernel, 10_000, batch_at=1)
        pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=offender)
        offender.batch = [(pid, BAD_KIND, "bad"), (pid, "log", "kept")]
        after = await _told_then_a_neighbour_logs(kernel, pid)
        lines = [e["data"]["text"] for e in kernel.store.events() if e["kind"] == "log"]
        assert lines == ["kept", "later"]
        assert kernel.store.events(pid=after)[-1]["data"]["new"] == "exited"


async def _told_then_a_neighbour_logs(kernel: Kernel, pid: int) -> int:
    """`pid` ends told (the typed error); then a new process logs "later" and exits: its
    pid."""
    told = await kernel.wait(pid, timeout=60)
    assert told["state"] == "exited" and told["exit_code"] == 1, told
    assert told["result"]["error"] == "INVALID_ARGUMENT", told
    later = Ticker(kernel, 2)
    after = kernel.spawn("ticker", caps=["clock:*:read"], planner=later)
    later.batch = [(after, "log", "later")]
    assert (await kernel.wait(after, timeout=60))["exit_code"] == 0
    return after


class LoneLine:
    """Logs one refused line when nothing else waits (the state events before it flushed),
    then waits: the periodic flush writes that line alone."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel, self.pid = kernel, 0

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        if len(history) == 1:
            self.kernel.events.flush()
            self.kernel.events.emit_batched(self.pid, BAD_KIND, text="bad")
            await trio.sleep(0.5)  # (ten periodic flushes)
        if len(history) < 10_000:
            return CallTool("now", {})
        return Exit(0, {"done": True})


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_lone_refused_line_flushed_alone_ends_its_process_not_the_broker(
        db_path: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """Red team rtd: the periodic flush writing a batch of one refused line raised the
    store driver's own error (not a store fault), which ended the broker (a traceback out
    of `Kernel.open`). Now the line is set aside, its process told; the broker goes on."""
    store = db_path if backend == "sqlite" else request.getfixturevalue("pg_database")
    async with Kernel.open(store, fs_root=tmp_path / "fs") as kernel:
        await _image(kernel)
        lone = LoneLine(kernel)
        lone.pid = pid = kernel.spawn("ticker", caps=["clock:*:read"], planner=lone)
        await _told_then_a_neighbour_logs(kernel, pid)
        lines = [e["data"]["text"] for e in kernel.store.events() if e["kind"] == "log"]
        assert lines == ["later"]
