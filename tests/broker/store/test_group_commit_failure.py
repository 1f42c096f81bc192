"""Group commit whose commit fails (the broker's database connection cut, on real
PostgreSQL): the calls waiting for it fail with a typed error, and no embedder's function
runs for a call whose intent is not on disk (nothing pretends the records were written)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg
import trio

from broker import AgentImage, CallTool, Exit, HostCall, Kernel, LibosError, Observation

PROCESSES = 8
STEPS = 6


class Stepping:
    """Calls the tool STEPS times whatever each call answered, keeping the errors."""

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []

    async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
        if history and history[-1].error is not None:
            self.errors.append(history[-1].error)
        return CallTool("notify", {"text": "hi"}) if len(history) < STEPS else Exit(0)


async def test_a_failed_group_commit_fails_its_calls_and_runs_no_effect(
        pg_database: str) -> None:
    seen: list[str | None] = []
    cut: list[int] = []
    kernel_box: list[Kernel] = []
    deferred: list[int] = []

    def notify(call: HostCall, text: str) -> str:
        with psycopg.connect(pg_database, autocommit=True) as other:  # what a crash leaves
            row = other.execute("SELECT phase FROM audit WHERE seq=%s", (call.call,)).fetchone()
            seen.append(row[0] if row else None)
            deferred.append(kernel_box[0].store.deferred_total)
            if len(seen) == PROCESSES and not cut:  # cut the broker's connection
                backend = kernel_box[0].store._db.raw.info.backend_pid  # type: ignore[attr-defined]
                other.execute("SELECT pg_terminate_backend(%s)", (backend,))
                cut.append(backend)
        return text.upper()

    planners = [Stepping() for _ in range(PROCESSES)]
    raised: list[LibosError] = []
    try:
        async with Kernel.open(pg_database) as kernel:
            kernel_box.append(kernel)
            kernel.host_tool(notify, kind="notice", right="send")
            await kernel.register_image(AgentImage("notifier", tools=("notify",),
                                                   needs=("notice:*:send",)))
            pids = [kernel.spawn("notifier", caps=["notice:*:send"], planner=p)
                    for p in planners]
            with trio.fail_after(60):
                for pid in pids:
                    with contextlib.suppress(LibosError):
                        await kernel.wait(pid)
    except LibosError as exc:  # the kernel's own writes (a wait's, its close's) fail: typed
        raised.append(exc)
    assert cut
    assert max(deferred) > 0  # records were group-committed
    assert None not in seen, seen  # every effect had its intent on disk
    assert len(seen) < PROCESSES * STEPS  # calls after the cut failed, before their effect
    errors: list[Any] = [e for p in planners for e in p.errors]
    assert all(e["code"] == "CONFLICT" and "lost the store" in e["message"]
               for e in errors), errors
    assert errors or raised  # a call that waited for the commit was failed, or the kernel
    assert all("lost the store" in exc.message for exc in raised)
