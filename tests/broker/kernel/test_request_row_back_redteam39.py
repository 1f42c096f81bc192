"""Red team 39: a request row a database writer renames ends its call at the broker's next
sweep (`NotFound`, ebb71b1); renamed back after, the row is pending again with its call gone.
The call's end left nothing on the chain (its cancellation found no row to settle), so the
request stayed open: a person's answer to it was taken (a `once` grant minted for a call that
had ended, there for the process's next same call), where an answer to a request whose call
is gone is `Conflict`. Now the call's end records the request cancelled on the chain,
whatever its row says later: the answer is refused, through the API and the CLI alike; the
neighbour request is answered as ever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.errors import Conflict
from tests.broker.kernel.test_approvals import ASK_WRITE, _proc
from tests.broker.kernel.test_request_row_gone import row_gone_under_a_call
from tests.broker.store.conftest import raw
from tests.broker.test_cli_approvals import libos


def _rename(db_path: Path | str, old: str, new: str) -> None:
    with raw(db_path) as db:
        db.execute("UPDATE approvals SET id = ? WHERE id = ?", (new, old))


async def _renamed_and_back(kernel: Kernel, db_path: Path | str, pid: int
                            ) -> tuple[str, dict[str, Any]]:
    """Two calls ask; the first's row is renamed until its call ends, then renamed back;
    the second is approved. Returns the first's id and the calls' outcomes."""
    return await row_gone_under_a_call(
        kernel, pid, lambda rid: _rename(db_path, rid, rid + "x"),
        lambda rid: _rename(db_path, rid + "x", rid))


def _grants(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == "approval.answer"
            and r["phase"] == "admin" and r["detail"].get("grant")]


async def test_an_answer_to_a_request_whose_call_ended_on_its_renamed_row_is_refused(
        store_at: Path | str, tmp_path: Path) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs", approval_timeout=300) as kernel:
        pid = await _proc(kernel, ASK_WRITE)
        gone, _ = await _renamed_and_back(kernel, store_at, pid)
        assert len(_grants(kernel, pid)) == 1  # the neighbour's
        assert gone not in {r["id"] for r in kernel.approvals()}  # not listed pending
        with pytest.raises(Conflict):
            kernel.approve(gone)  # its call is gone
        assert len(_grants(kernel, pid)) == 1  # nothing minted for the ended call
        cancelled = [r for r in kernel.audit(pid) if r["phase"] == "admin"
                     and r["detail"].get("request") == gone
                     and r["detail"].get("state") == "cancelled"]
        assert len(cancelled) == 1


async def test_the_cli_refuses_an_answer_to_it_too(db_path: Path, tmp_path: Path) -> None:
    async with Kernel.open(db_path, fs_root=tmp_path / "fs", approval_timeout=300) as kernel:
        pid = await _proc(kernel, ASK_WRITE)
        gone, _ = await _renamed_and_back(kernel, db_path, pid)
        refused = libos(db_path, "approve", gone)
        assert refused.returncode == 2 and "CONFLICT" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert kernel.store.get_approval(gone)["answer"] is None
