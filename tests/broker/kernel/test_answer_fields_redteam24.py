"""Red team 24 (HIGH): a signed answer covered the request's id, process, call, arguments'
hash and times, but not the columns `apply` lifts the grant from: `labels` (what the grant
declassifies), `resource`, `cap_kind`, `cap_right`, `cap_id`, `cap_scope`. A database writer
(no key) who edits them under a person's signed answer had it applied to what the person was
never shown: here `labels` widened, so the grant declassified `pii` too. Each is covered now:
refused, pending again, on the record; the same answer over the row as signed is applied."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel
from tests.broker.kernel.test_approvals import _collect
from tests.broker.kernel.test_signed_answers_redteam21 import (
    ANSWERED,
    _exporting,
    _refused,
    _signed_for,
    _write,
)
from tests.broker.syscalls.test_human import _ask, _asker


@pytest.mark.parametrize("edit", [
    {"labels": json.dumps(["pii", "secret"])},
    {"cap_right": "read"},
    {"resource": "/exports/other"},
    {"cap_scope": "/**"},
])
async def test_a_signed_answer_over_edited_request_fields_is_refused(
        db_path: Path, tmp_path: Path, edit: dict[str, str]) -> None:
    async with _exporting(db_path, tmp_path, "t") as (kernel, root, [request], done):
        signed = _signed_for(kernel, request)
        shown = {k: kernel.store.get_approval(request["id"])[k] for k in edit}
        _write(db_path, request["id"], {**edit, **signed})  # edited under the signed answer
        record = await _refused(kernel, request["id"], "NOT_CAPABLE")
        assert "does not hold" in record["detail"]["message"]
        assert not [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                    and r["phase"] == "admin"]
        # The neighbour: the same person's answer over the request as it was shown: applied.
        _write(db_path, request["id"], {**shown, **signed})
        with trio.fail_after(10):
            while not done:
                await trio.sleep(0.05)
    assert (root / "exports" / "t").read_text() == "tok-123"


async def test_a_question_answered_before_is_not_waited_on_again(
        db_path: Path, kernel: Kernel) -> None:
    """A writer sets an applied question back to pending; the process asks it again (same
    arguments: the call resumed waiting on that request), and the writer marks it applied
    with a value of its own. The chain records an answer applied to that request (the
    person's first), so the mark was taken and the writer's value handed to the call. Now a
    request the chain records answered is never resumed: the call files a new one, for a
    person to answer."""
    pid = await _asker(kernel)
    asked = {"question": "Ship it?", "choices": ["yes", "no"]}

    async def no(request: dict[str, Any]) -> None:
        kernel.answer(request["id"], "no", who="alice")

    first, result = await _ask(kernel, pid, asked, no)
    assert result == "no"
    used = {k: kernel.store.get_approval(first["id"])[k] for k in (*ANSWERED, "applied")}
    _write(db_path, first["id"], {**{k: None for k in (*ANSWERED, "applied")},
                                  "state": "pending", "grant_id": None,
                                  "deadline": time.time() + 300})
    results: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, results, kernel.call_tool(pid, "ask_human", asked))
        await trio.sleep(0.3)
        # The writer answers the old request itself, marked applied (the call waits on it
        # if it resumed it; the sweep in shared mode wakes it, which the test stands in for).
        _write(db_path, first["id"], {**used, "value": json.dumps("yes")})
        kernel.queue._wake(first["id"])
        await trio.sleep(0.3)
        [request] = [r for r in kernel.approvals() if r["id"] != first["id"]] or [first]
        assert not results, results  # (no value but a person's)
        kernel.answer(request["id"], "no", who="alice")
    assert results == ["no"] and request["id"] != first["id"]


async def test_a_cancelled_answer_revived_by_a_writer_is_refused(
        db_path: Path, tmp_path: Path) -> None:
    """A request the broker cancelled with a signed answer in it (its call gone) was closed
    by a record under the call's own syscall, which the chain check (`approval.answer`
    records) did not read: a writer who set it back to approved and unapplied had the
    person's answer applied after the cancellation (LOW: the person signed that very answer;
    only the broker's cancellation was undone). Now the chain's cancellations are read too
    (`audit_admin`): refused, on the record, the request cancelled again."""
    async with _exporting(db_path, tmp_path, "t") as (kernel, _root, [request], done):
        signed = _signed_for(kernel, request)
        _write(db_path, request["id"], signed)  # the person's answer, then the call is gone
        kernel.queue._settle("cancelled", "cancelled: its call ended", ids=[request["id"]],
                             answered_too=True)
        assert kernel.store.get_approval(request["id"])["state"] == "cancelled"
        await trio.sleep(0.3)  # (the waiting call takes its cancellation)
        _write(db_path, request["id"], {"state": "approved", "applied": None})
        kernel.queue.sweep()
        assert not [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                    and r["phase"] == "admin" and r["detail"]["request"] == request["id"]]
        assert not done
        [record] = [r for r in kernel.audit() if r["syscall"] == "approval.answer"
                    and r["phase"] == "rejected" and r["detail"]["request"] == request["id"]]
        assert (record["detail"]["error"], record["detail"]["via"]) == ("CONFLICT", "store")
        assert "cancelled" in record["detail"]["message"]
        row = kernel.store.get_approval(request["id"])
        assert (row["state"], row["answer"], row["sig"]) == ("cancelled", None, None)
        assert row["applied"] is not None
        # Set pending again, the same call is not resumed on it; its old answer, written in
        # again, is refused the same way.
        _write(db_path, request["id"], {"state": "pending", "applied": None, "answer": None,
                                        "answered": None, "sig": None})
        assert kernel.queue.answers.settled_before(request["id"])
        _write(db_path, request["id"], {**signed, "applied": None})
        kernel.queue.sweep()
        assert len([r for r in kernel.audit() if r["syscall"] == "approval.answer"
                    and r["detail"]["request"] == request["id"]]) == 2  # (both refusals)
        assert kernel.store.get_approval(request["id"])["state"] == "cancelled" and not done
