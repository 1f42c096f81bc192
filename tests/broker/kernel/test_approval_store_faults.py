"""Approvals under a failing store (`broker.kernel.faults`): a person's answer gives nothing
usable until its record is durable (check, audit, act), the waiting call applies it once the
store heals, and the watcher's sweep goes on (one log line when it starts failing, one when it
works again), losing nothing a front end logged. Real SQLite, made to fail by a trigger on
the audit table (`tests/broker/kernel/faulty_store.py`); a fake only for trio's clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from broker import Kernel
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_approval_grants import _fs_grants, _proc, ask_write, write


def _lines(caplog: pytest.LogCaptureFixture, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(what)]


@asynccontextmanager
async def _a_waiting_write(kernel: Kernel, pid: int
                           ) -> AsyncIterator[tuple[dict[str, Any], list[Any]]]:
    """`pid`'s write, waiting for a person: yields its request and the call's results (empty
    while it waits); the block's body answers it, and the result is in once it ends."""
    results: list[Any] = []

    async def call() -> None:
        results.append(await kernel.call_tool(pid, "write_file", write()))

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            while not kernel.approvals():
                await trio.sleep(0.01)
            [request] = kernel.approvals()
            yield request, results


@asynccontextmanager
async def _always_answered_while_failing(kernel: Kernel, fault: Fault, table: str
                                         ) -> AsyncIterator[tuple[int, dict[str, Any], list[Any]]]:
    """A process's write waits for a person; the store starts failing (`table`'s inserts);
    the person answers "always"; for 10 s the waiting call tries to apply it. Yields the pid,
    the request and the call's results (empty while it waits); the store heals at the end
    of the block, and the call's result is in before the block's caller goes on."""
    fault.install(table)
    pid = await _proc(kernel, ask_write(uses=5))
    async with _a_waiting_write(kernel, pid) as (request, results):
        fault.set(True)
        kernel.approve(request["id"], always=True)
        await trio.sleep(10)  # the waiting call tries to apply it, again and again
        yield pid, request, results
        fault.set(False)


async def test_an_always_answer_grants_nothing_until_its_record_is_durable(
        autojump_clock: trio.abc.Clock, kernel: Kernel, fault: Fault,
        caplog: pytest.LogCaptureFixture) -> None:
    """The red team's case: the answer's record failed, yet `_apply` had already added the
    `always` grant in memory and taken the asking capability's uses; every retry did it
    again. The grant could be used with no durable record of the answer that made it."""
    caplog.set_level(logging.WARNING, logger="libos.kernel")
    async with _always_answered_while_failing(kernel, fault, "audit") as (pid, request, results):
        assert not results  # still waiting for the record
        assert _fs_grants(kernel, pid) == []  # nothing usable meanwhile
        [ask] = [c for c in kernel.capabilities(pid) if c["effect"] == "ask"]
        assert ask["uses"] == 5  # nor any use taken from the asking capability
        assert fault.count("SELECT COUNT(*) FROM audit WHERE syscall='approval.answer'") == 0
        assert len(_lines(caplog, f"applying the answer to {request['id']} failed")) == 1
    assert results == [1]
    [grant] = _fs_grants(kernel, pid)
    assert grant["uses"] == 5 - 1
    with trio.fail_after(120):
        assert await kernel.call_tool(pid, "write_file", write()) == 1  # the grant works
    assert len(_lines(caplog, f"applying the answer to {request['id']} works again")) == 1
    records = kernel.audit(pid)
    [answer] = [i for i, r in enumerate(records) if r["syscall"] == "approval.answer"]
    uses = [i for i, r in enumerate(records) if r["syscall"] == "fs.write"
            and r["phase"] == "intent"]
    assert len(uses) == 2 and answer < uses[0]  # the answer's record before any use
    assert records[answer]["detail"]["grant"] == grant["id"]
    assert kernel.verify_audit()[1] == []


async def test_the_sweep_survives_a_failing_store_and_loses_no_refusal(
        autojump_clock: trio.abc.Clock, kernel: Kernel, fault: Fault,
        caplog: pytest.LogCaptureFixture) -> None:
    """A refusal a front end in another OS process logged (it may not write the audit) is
    moved into the audit by the sweep. It was dropped before its record was written: a
    store that failed then lost it. Now it stays until its record is durable, and the sweep
    logs its failing streak once instead of a traceback a tick."""
    caplog.set_level(logging.WARNING)
    fault.install("audit")
    fault.set(True)
    kernel.store.log_approval_reject({"request": "nope", "answer": "once", "who": "cli",
                                      "error": "NOT_FOUND", "message": "no such request"})
    await trio.sleep(20)  # several sweeps
    rejected = "SELECT COUNT(*) FROM audit WHERE phase='rejected'"
    assert fault.count(rejected) == 0
    assert fault.count("SELECT COUNT(*) FROM approval_rejects") == 1
    assert len(_lines(caplog, "the approval sweep failed")) == 1
    assert not [r for r in caplog.records if r.exc_info]  # no traceback
    fault.set(False)
    await trio.sleep(5)
    assert fault.count(rejected) == 1
    assert fault.count("SELECT COUNT(*) FROM approval_rejects") == 0
    assert len(_lines(caplog, "the approval sweep works again")) == 1
    [record] = [r for r in kernel.audit() if r["phase"] == "rejected"]
    assert record["detail"]["who"] == "cli" and record["detail"]["request"] == "nope"
    assert kernel.verify_audit()[1] == []


async def test_an_answer_retried_under_a_failing_store_is_audited_once(
        autojump_clock: trio.abc.Clock, kernel: Kernel, fault: Fault) -> None:
    """Red team (rt/late): the audit works, the grant's own row does not (inserts into
    `capabilities` fail). Each retry of `_apply` appended another `approval.answer` record,
    each naming a freshly minted grant that never existed: after the store heals, the chain
    says one answer granted several capabilities, all but the last of them phantoms."""
    async with _always_answered_while_failing(kernel, fault, "capabilities") as (
            pid, request, results):
        assert not results and _fs_grants(kernel, pid) == []
    assert results == [1]
    [grant] = _fs_grants(kernel, pid)
    answers = [r for r in kernel.audit(pid) if r["syscall"] == "approval.answer"
               and r["detail"].get("request") == request["id"]]
    assert [r["detail"]["grant"] for r in answers] == [grant["id"]]
    assert kernel.verify_audit()[1] == []


async def test_a_request_filed_while_its_event_fails_waits_for_its_answer(
        kernel: Kernel, fault: Fault) -> None:
    """The request's row and its `ask` record committed, then its `approval` event failed
    (the store refusing events): the call was a `Conflict` ("nothing of it was done") while
    the request it had filed stayed pending before a person, nobody waiting for the answer.
    Now the event waits for the flush and the call waits for the answer: approved, the write
    is done once."""
    fault.install("events")
    pid = await _proc(kernel, ask_write(uses=5))
    fault.set(True)
    async with _a_waiting_write(kernel, pid) as (request, results):
        await trio.sleep(0.2)
        assert not results  # waiting for the person, not failed
        fault.set(False)
        kernel.approve(request["id"])
    assert results == [1]
    kernel.events.flush()
    assert [e for e in kernel.store.events(pid=pid) if e["kind"] == "approval"
            and e["data"].get("request") == request["id"]]
    assert kernel.verify_audit()[1] == []


async def test_a_request_whose_record_fails_is_not_filed(kernel: Kernel, fault: Fault) -> None:
    """The request's row and its `ask` record are one transaction: the record refused (the
    store failing the `ask` record's insert only), no request waits before a person with
    nobody waiting for it (it was filed, and the call told `Conflict`). Healed, the same
    call asks again and, approved, writes once."""
    from broker import Conflict

    fault.install()
    fault.other.execute("CREATE TRIGGER fail_ask BEFORE INSERT ON audit WHEN NEW.phase='ask' "
                        "AND (SELECT failing FROM fault) BEGIN SELECT RAISE(ABORT, 'disk full'); "
                        "END")
    pid = await _proc(kernel, ask_write(uses=5))
    fault.set(True)
    with pytest.raises(Conflict):
        await kernel.call_tool(pid, "write_file", write())
    fault.set(False)  # (reads commit what waits first)
    assert kernel.approvals() == []
    async with _a_waiting_write(kernel, pid) as (request, results):
        kernel.approve(request["id"])
    assert results == [1]
    asks = [r for r in kernel.audit(pid) if r["phase"] == "ask"]
    assert [r["detail"]["request"] for r in asks] == [request["id"]]
    assert kernel.verify_audit()[1] == []
