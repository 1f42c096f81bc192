"""What a broker remembers of the answers given in it is bounded (lane mailhead).

`ApprovalAnswers._here` keeps each answer given in this broker (`Kernel.approve`, a front
end) until it applies it, so that it takes its own answer unsigned. Brokers sharing a
PostgreSQL store: an answer given on broker b to a request whose call waits on broker a is
applied by a, and b kept it for its whole life, one entry per such request (a leak over a long
run; so did an answer to a request cancelled before it was applied). Now b's sweep forgets
those no longer waiting to be applied, and a request closed unanswered forgets its answer at
once. Real PostgreSQL, two brokers in one trio run."""

from __future__ import annotations

from pathlib import Path

import trio

from broker import Kernel
from broker.kernel.image import AgentImage
from tests.broker.kernel.test_leasing import NEEDS, _until, script

ASKS = [{"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}]


async def test_an_answer_a_peer_applied_is_forgotten_here(
        pg_database: str, tmp_path: Path) -> None:
    image = AgentImage("asker", tools=("write_file",), needs=NEEDS, planner=script(
        {"tool": "write_file", "args": {"path": "/out/r.txt", "data": "report"}},
        {"tool": "write_file", "args": {"path": "/out/s.txt", "data": "second"}}))
    (tmp_path / "a" / "out").mkdir(parents=True)
    async with Kernel.open(pg_database, fs_root=tmp_path / "a", broker="a") as a, \
            Kernel.open(pg_database, fs_root=tmp_path / "b", broker="b") as b:
        await a.register_image(image)
        pid = a.spawn("asker", caps=ASKS)
        for name in ("r", "s"):
            await _until(lambda: b.approvals())  # b lists a's request, from the store
            [request] = b.approvals()
            b.approve(request["id"])  # on broker b; the call waits on broker a, which applies
            assert request["id"] in b.queue.answers.given()
            await _until((tmp_path / "a" / "out" / f"{name}.txt").exists)
            b.queue.sweep()  # (b's watcher sweeps every few seconds; here at once)
            # Applied by a: b no longer holds it.
            assert b.queue.answers.given() == {}
        with trio.fail_after(15):
            assert (await a.wait(pid))["state"] == "exited"
        # The neighbour: what a applied is on the chain once each, and a remembers nothing.
        applied = [r for r in a.audit(pid) if r["syscall"] == "approval.answer"
                   and r["phase"] == "admin"]
        assert len(applied) == 2 and a.queue.answers.given() == {}


async def test_an_answer_to_a_request_cancelled_before_it_applied_is_forgotten(
        kernel: Kernel, tmp_path: Path) -> None:
    """(One broker, SQLite.) An answer given here whose request is cancelled before it is
    applied (its process killed) is dropped as the request is settled, not kept."""
    await kernel.register_image(AgentImage("asker", tools=("write_file",), needs=NEEDS,
                                           planner=script({"tool": "write_file", "args": {
                                               "path": "/out/r.txt", "data": "report"}})))
    pid = kernel.spawn("asker", caps=ASKS)
    await _until(lambda: kernel.approvals())
    [request] = kernel.approvals()
    # The answer as `answer` remembers it, written but not applied yet, when the kill comes.
    kernel.queue.answers.given_here(request["id"], ("approved", "once", None, None))
    kernel.kill(pid)
    assert kernel.store.get_approval(request["id"])["state"] == "cancelled"
    assert kernel.queue.answers.given() == {}
