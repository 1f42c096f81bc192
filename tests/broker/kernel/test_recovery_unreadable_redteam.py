"""Red team on what an open's recovery reads of the chain, by whoever can write the database
but holds no key: one outcome record whose detail was edited into something unreadable (an
array, not JSON, JSON nested past Python's parser) raised AttributeError, JSONDecodeError or
RecursionError out of `Kernel.open` (`recovery.close_open_intents`): the broker could not
start. Now it is read as a record with no detail, as the links walk reads one: its intent's
outcome is recorded unknown (never run again), `--verify` names the edited record, and the
broker serves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.conftest import open_image

UNREADABLE = {"array": "[]", "not-json": "not json", "deep": "[" * 100_000 + "]" * 100_000}


@pytest.mark.parametrize("detail", list(UNREADABLE.values()), ids=list(UNREADABLE))
async def test_an_unreadable_outcome_does_not_stop_an_open(
        store_at: Path | str, tmp_path: Path, detail: str) -> None:
    fs = tmp_path / "fs"
    (fs / "data").mkdir(parents=True)
    (fs / "data" / "f").write_text("f")
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/**:read,write"])
        await kernel.call_tool(pid, "write_file", {"path": "/data/g", "data": "g"})
        [(intent, outcome)] = [(r.record.detail["intent"], r.seq)
                               for r in kernel.store.audit_records(pid=pid)
                               if r.record.syscall == "fs.write" and r.record.phase == "outcome"]
    edit(store_at, "UPDATE audit SET detail=? WHERE seq=?", (detail, outcome))
    async with Kernel.open(store_at, fs_root=fs) as kernel:
        unknown = [r for r in kernel.audit(pid) if r["phase"] == "outcome"
                   and r["detail"].get("intent") == intent and r["detail"].get("unknown")]
        assert len(unknown) == 1  # (the write is not made again)
        assert (f"record {outcome}: content does not match its hash: edited"
                in kernel.verify_audit()[1])
        # (Its own grant, recorded before the edit, may fail closed: a new one reads.)
        fresh = kernel.spawn("agent", caps=["fs:/data/**:read"])
        assert await kernel.call_tool(fresh, "read_file", {"path": "/data/g"}) == "g"
