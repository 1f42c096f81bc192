"""A flood of approval requests is bounded and costs others little: one TypeScript tool call
(real Deno) files 1,000 requests at once. At most `max_pending_approvals` are pending; the
rest wait for a slot and fail with `LimitExceeded` at their deadline (audited). Meanwhile
another process's syscalls keep answering, and a third process's own request is filed and
approved as usual. Before the bound (each request scanning every pending row, each waiter
polling its row), one read of another process waited 23 s and the flood took 27 s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bench.approval_bench import (
    ASK_WRITE,
    ASKS,
    REQUESTS,
    TIMEOUT,
    approval_phases,
    measure,
    open_flood_kernel,
)
from broker import Kernel
from broker.kernel.approval_slots import DEFAULT_MAX_PENDING
from sandboxes.deno import DenoSandbox


@pytest.fixture
async def flood_kernel(tmp_path: Path) -> AsyncIterator[Kernel]:
    # Requests live twice the bench's 3 s: on a loaded machine filing took 1.6 s of it, and
    # too few reads fell in the waiting phase to measure it (2, not > 20).
    async with DenoSandbox(spares=1, memory_mb=128) as deno, open_flood_kernel(
            tmp_path, deno, timeout=2 * TIMEOUT) as kernel:
        yield kernel


async def test_a_thousand_requests_from_one_call_are_bounded_and_cost_others_little(
        flood_kernel: Kernel) -> None:
    kernel = flood_kernel
    phase_of = approval_phases(kernel)
    state = phase_of.state  # type: ignore[attr-defined]
    out: dict[str, Any] = {}

    async def flood() -> None:
        out.update(await measure(kernel, ASKS, phase_of))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            with trio.fail_after(30):
                while state["phase"] != "waiting":
                    await trio.sleep(0.01)
            # Another process asks meanwhile: its request is filed and answered as usual.
            asker = kernel.spawn("agent", caps=[ASK_WRITE])
            results: list[Any] = []

            async def ask() -> None:
                results.append(await kernel.call_tool(
                    asker, "write_file", {"path": "/out/mine.txt", "data": "mine"}))

            nursery.start_soon(ask)
            with trio.fail_after(10):
                while not [r for r in kernel.approvals() if r["pid"] == asker]:
                    await trio.sleep(0.01)
            kernel.approve(next(r for r in kernel.approvals() if r["pid"] == asker)["id"])
    assert results == [4]

    flooder, codes = out["flooder"], out["codes"]
    assert sum(codes.values()) == REQUESTS and set(codes) <= {"LIMIT_EXCEEDED",
                                                              "APPROVAL_DENIED"}
    assert codes["LIMIT_EXCEEDED"] >= REQUESTS // 2  # most never got a slot
    # Bounded: never more than the limit pending, few ever filed, every one settled.
    assert state["most_pending"] <= DEFAULT_MAX_PENDING
    filed = [r for r in kernel.store.list_approvals(state=None) if r["pid"] == flooder]
    # A slot whose request expires is filed again (the slower the machine, the more), so the
    # bound is on what the records show, not on a count: each request filed at most once,
    # expired no earlier than its deadline, and never more than the limit pending at the
    # instant one is filed (an unbounded queue files all 1,000 at once).
    assert DEFAULT_MAX_PENDING <= len(filed) <= REQUESTS - codes["LIMIT_EXCEEDED"]
    assert all(r["state"] in ("expired", "cancelled") for r in filed)
    assert all(r["deadline"] <= r["answered"] for r in filed if r["state"] == "expired")
    assert max(sum(s["created"] <= r["created"] < s["answered"] for s in filed)
               for r in filed) <= DEFAULT_MAX_PENDING
    refused = [r for r in kernel.audit(flooder) if r["phase"] == "rejected"
               and r["syscall"] == "fs.write"]
    assert len(refused) == codes["LIMIT_EXCEEDED"]
    assert all(r["detail"]["error"] == "LIMIT_EXCEEDED" for r in refused)
    # Another process kept answering: within 250 ms while the flood waits (woken, never
    # polled, nothing scanned; a bound in ms, not in tens of seconds as before, loose enough
    # for a loaded shared machine: test_approval_slots counts the reads exactly), and never
    # held up for long while 1,000 syscalls arrive or fail at once (about what a fan-out of
    # 1,000 plain syscalls costs: see bench/approval_bench.py).
    latencies = out["latencies"]
    worst = {p: max(s for q, s in latencies if q == p) for p in ("filing", "waiting", "ending")}
    print(f"filed {len(filed)} ({codes}); worst read (ms): "
          f"{ {p: round(s * 1000, 1) for p, s in worst.items()} }; {dict(codes)}")
    assert sum(q == "waiting" for q, _ in latencies) > 20
    assert worst["waiting"] < 0.250
    assert max(worst.values()) < 2.0
