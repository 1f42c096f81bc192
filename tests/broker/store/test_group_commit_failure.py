"""Group commit whose commit fails (the broker's database connection cut, on real
PostgreSQL): a call waiting for it fails with a typed error, no embedder's function runs for
a call whose intent is not on disk (nothing pretends the records were written), and the
single writer connects again: its processes go on and end, and what they did after the cut
is durable, in a chain that verifies.

The first process to step steps alone (the others' tasks have not started yet), so its first
call is not group-committed: its outcome is committed at once, and tried once. If the cut
meets that commit, its caller is told it was carried out with its outcome unknown, and its
intent stays open until the next open, whose recovery records `outcome unknown` for it
(as after a crash). So what holds after the close: every intent has its outcome, or its
caller was told so and the next open closes it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
import pytest
import trio

from broker import AgentImage, CallTool, Exit, HostCall, Kernel, LibosError, Observation
from broker.kernel import anchoring, approvals, controls, events

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
    # (the host's call, or the tool call around it when only that was not grouped)
    told_unknown = [e for e in errors if "was carried out" in e["message"]]
    assert len(_open_intents(pg_database)) == len(told_unknown)  # after the kernel closed
    async with Kernel.open(pg_database):  # its recovery closes them
        pass
    assert len(_unknown_outcomes(pg_database)) == len(told_unknown)
    with psycopg.connect(pg_database, autocommit=True) as other:
        counts = dict(other.execute("SELECT phase, count(*) FROM audit WHERE tool='notify'"
                                    " GROUP BY 1").fetchall())
        after = other.execute("SELECT count(*) FROM audit WHERE tool='notify' AND phase="
                              "'intent' AND seq > %s", (cut_at[0],)).fetchone()[0]
    # Calls after the cut were made and are on disk; every intent has its outcome, and every
    # effect that ran has both.
    assert after > 0
    assert counts["intent"] == counts["outcome"] >= len(seen)


async def test_an_outcome_cut_off_outside_a_group_commit_is_unknown_until_the_next_open(
        pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The interleaving of the test above that its first call alone can meet (begun before
    the others' tasks start: committed at once, not grouped), made every time: the first
    process is spawned alone, the others once its call is in its effect; that effect waits
    until every process is in its effect, then cuts the broker's connection, and the others'
    effects wait until its caller has heard. Its outcome's one commit meets the cut: the
    caller is told it was carried out and its outcome is unknown (not "nothing was done"),
    the intent stays without an outcome while the store is closed, and the next open records
    `outcome unknown` for it. Every other call is whole. (The kernel's timers, which read or
    write the store, wait meanwhile: a statement of theirs first after the cut would meet it
    instead, and the outcome's commit would connect again.)"""
    for module, timer in ((anchoring, "SIGN_INTERVAL"), (events, "FLUSH_INTERVAL"),
                          (controls, "CONTROL_POLL"), (approvals, "POLL_SECONDS")):
        monkeypatch.setattr(module, timer, 3600.0)
    entered: list[int] = []
    everyone_in, told = threading.Event(), threading.Event()
    first_in = trio.Event()
    kernel_box: list[Kernel] = []

    def notify(call: HostCall, text: str) -> str:
        entered.append(call.call)
        if len(entered) == PROCESSES:
            everyone_in.set()
        if len(entered) == 1:  # the call begun alone
            trio.from_thread.run_sync(first_in.set)
            everyone_in.wait(10)  # (a guard against a hang: they come at once)
            backend = kernel_box[0].store._db.raw.info.backend_pid  # type: ignore[attr-defined]
            with psycopg.connect(pg_database, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (backend,))
        elif len(entered) <= PROCESSES:
            told.wait(10)  # (the same guard)
        return text.upper()

    class Telling(Stepping):
        async def next_action(self, history: Sequence[Observation]) -> CallTool | Exit:
            if history and history[-1].error is not None:
                told.set()
            return await super().next_action(history)

    planners = [Telling() for _ in range(PROCESSES)]
    async with Kernel.open(pg_database) as kernel:
        kernel_box.append(kernel)
        kernel.host_tool(notify, kind="notice", right="send")
        await kernel.register_image(AgentImage("notifier", tools=("notify",),
                                               needs=("notice:*:send",)))
        pids = [kernel.spawn("notifier", caps=["notice:*:send"], planner=planners[0])]
        with trio.fail_after(30):  # (a guard against a hang: it takes seconds)
            await first_in.wait()
            pids += [kernel.spawn("notifier", caps=["notice:*:send"], planner=p)
                     for p in planners[1:]]
            for pid in pids:
                await kernel.wait(pid)
    [error] = [e for p in planners for e in p.errors]
    assert error["code"] == "CONFLICT"
    assert "host.notify was carried out" in error["message"], error
    assert "lost the store" in error["message"] and "outcome is unknown" in error["message"]
    assert _open_intents(pg_database) == [entered[0]]
    async with Kernel.open(pg_database) as kernel:  # its recovery closes it
        assert kernel.verify_audit()[1] == []
    assert _unknown_outcomes(pg_database) == [entered[0]]
    assert _open_intents(pg_database) == []
    with psycopg.connect(pg_database, autocommit=True) as other:
        [(ok,)] = other.execute("SELECT count(*) FROM audit WHERE tool='notify' AND phase="
                                "'outcome' AND detail::jsonb->>'ok' = 'true'").fetchall()
    assert ok == PROCESSES * STEPS - 1


def _open_intents(dsn: str) -> list[int]:
    """The seqs of the intents that have no outcome."""
    with psycopg.connect(dsn, autocommit=True) as db:
        return [seq for (seq,) in db.execute(
            "SELECT seq FROM audit i WHERE phase='intent' AND NOT EXISTS"
            " (SELECT 1 FROM audit o WHERE o.phase='outcome' AND"
            " o.detail::jsonb->>'intent' = i.seq::text) ORDER BY seq").fetchall()]


def _unknown_outcomes(dsn: str) -> list[int]:
    """The intents whose outcome recovery recorded as unknown."""
    with psycopg.connect(dsn, autocommit=True) as db:
        return [int(intent) for (intent,) in db.execute(
            "SELECT detail::jsonb->>'intent' FROM audit WHERE"
            " phase='outcome' AND detail::jsonb->>'error' = 'OUTCOME_UNKNOWN' ORDER BY seq"
            ).fetchall()]
