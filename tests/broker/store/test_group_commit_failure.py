"""Group commit whose commit fails (the broker's database connection cut, on real
PostgreSQL): a call waiting for it fails with a typed error, no embedder's function runs for
a call whose intent is not on disk (nothing pretends the records were written), and the
single writer connects again: its processes go on and end, and what they did after the cut
is durable, in a chain that verifies."""

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
    cut_at: list[int] = []  # the seq of the call whose effect cut the connection
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
                cut_at.append(call.call)
        return text.upper()

    planners = [Stepping() for _ in range(PROCESSES)]
    problems: list[tuple[int, list[str]]] = []
    async with Kernel.open(pg_database) as kernel:
        kernel_box.append(kernel)
        kernel.host_tool(notify, kind="notice", right="send")
        await kernel.register_image(AgentImage("notifier", tools=("notify",),
                                               needs=("notice:*:send",)))
        pids = [kernel.spawn("notifier", caps=["notice:*:send"], planner=p)
                for p in planners]
        with trio.fail_after(30):  # (a guard against a hang: it takes seconds)
            for pid in pids:
                with contextlib.suppress(LibosError):
                    await kernel.wait(pid)
        problems.append(kernel.verify_audit())
    assert cut
    assert problems[0][1] == []  # the chain verifies, across the reconnection
    assert max(deferred) > 0  # records were group-committed
    assert None not in seen, seen  # every effect had its intent on disk
    errors: list[Any] = [e for p in planners for e in p.errors]
    assert all(e["code"] == "CONFLICT" and "lost the store" in e["message"]
               for e in errors), errors
    with psycopg.connect(pg_database, autocommit=True) as other:  # after the kernel closed
        counts = dict(other.execute("SELECT phase, count(*) FROM audit WHERE tool='notify'"
                                    " GROUP BY 1").fetchall())
        after = other.execute("SELECT count(*) FROM audit WHERE tool='notify' AND phase="
                              "'intent' AND seq > %s", (cut_at[0],)).fetchone()[0]
    # Calls after the cut were made and are on disk; every intent has its outcome, and every
    # effect that ran has both.
    assert after > 0
    assert counts["intent"] == counts["outcome"] >= len(seen)
