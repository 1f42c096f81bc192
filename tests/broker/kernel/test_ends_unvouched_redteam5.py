"""Red team 5 on the ends the chain records (docs/DESIGN.md, invariant 15; broker/store/ends.py):
someone who can write the database but holds no key appends an intact record (its hash is
unkeyed) past the signed head claiming the host killed a live, legitimate process. A record
past the anchored head vouches for nothing (it grants nothing: `caps.unvouched`); it must not
end a process either, else any writer ends any process and the broker's own `audit.anchor`
("ended again") signs past the forgery."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Conflict, Kernel
from broker.store.audit import AuditRecord, record_hash
from broker.store.audit_rows import INSERT_AUDIT
from broker.store.connection import dump_json
from broker.store.opening import open_store
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_process_revived_redteam import REVIVE, _revived_notes
from tests.conftest import open_image

fs_root = links.fs_root


def append_past_head(store_at: Path | str, record: AuditRecord) -> int:
    """What a database writer without the key can do: `record`, intact (its hash is unkeyed)
    and linked to the head, appended past it; its seq."""
    s = open_store(store_at)
    try:
        [head] = list(s.audit_records(after=s.head_seq - 1))
        seq, prev, ts = head.seq + 1, head.hash, head.ts + 1
        detail = dump_json(record.detail)
        with s.transaction() as db:
            r = record
            db.execute(INSERT_AUDIT, (seq, ts, r.pid, r.inv, r.tool, r.phase, r.syscall,
                                      r.resource, r.args_hash, r.cap_id, detail, prev,
                                      record_hash(seq, ts, r, detail, prev), None))
    finally:
        s.close()
    return seq


def forge_host_kill(store_at: Path | str, pid: int) -> int:
    """An intact `proc.signal` admin kill of `pid`, linked to the head, past it."""
    return append_past_head(store_at, AuditRecord(phase="admin", syscall="proc.signal",
                                                  pid=pid, detail={"signal": "kill"}))


async def test_a_kill_forged_past_the_head_does_not_end_a_live_process(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
    forged = forge_host_kill(store_at, pid)
    for _ in range(2):  # (the open signs past the forgery: the next must still ignore it)
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            assert kernel.process(pid).alive, kernel.process(pid)
            assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
            assert noted_spans(kernel) == [[forged - 1, forged]]
            assert _revived_notes(kernel, pid) == []
            assert all(f"process {pid}:" not in line for line in kernel.verify_audit()[1])


def noted_spans(kernel: Kernel) -> list[object]:
    """The spans the opens recorded as unvouched (`caps.unvouched`)."""
    return [r["detail"]["cap_unvouched"] for r in kernel.audit()
            if r["syscall"] == "caps.unvouched"]


def forge_rejected_exit(store_at: Path | str, pid: int) -> None:
    """An intact `host.exit` rejected record of `pid` (no `since`, as an older broker's),
    linked to the head, past it."""
    append_past_head(store_at, AuditRecord(phase="rejected", syscall="host.exit", pid=pid,
                                           detail={"error": "CONFLICT"}))


async def test_a_refusal_forged_past_the_head_does_not_take_back_a_genuine_end(
        store_at: Path | str, fs_root: Path) -> None:
    """The fail-open side of the same gap: the writer takes a genuine `host.exit` back with
    a forged refusal past the head, sets the row runnable, and the process is served."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        kernel.exit(pid, 3, "done")
        neighbour = kernel.spawn("agent", caps=[PUB])
    forge_rejected_exit(store_at, pid)
    edit(store_at, REVIVE, (pid,))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        with pytest.raises(Conflict):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert len(_revived_notes(kernel, pid)) == 1
        assert len(noted_spans(kernel)) == 1
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_a_lineage_forged_past_the_head_does_not_extend_a_kill(
        store_at: Path | str, fs_root: Path) -> None:
    """A `proc.spawn` outcome forged past the head making a live process the child of
    another: when the host later kills that other (genuinely), the kill does not reach the
    live one at the next open; the killed one stays dead."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        victim, other = (kernel.spawn("agent", caps=[PUB]) for _ in range(2))
    append_past_head(store_at, AuditRecord(phase="outcome", syscall="proc.spawn", pid=other,
                                           detail={"ok": True, "result": victim}))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert len(noted_spans(kernel)) == 1
        kernel.kill(other)
    for _ in range(2):
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            assert kernel.process(victim).alive, kernel.process(victim)
            assert await kernel.call_tool(victim, "read_file", {"path": "/data/pub/f"}) == "pub"
            assert _revived_notes(kernel, victim) == []
            assert not kernel.process(other).alive


async def test_a_refusal_whose_note_a_broken_link_unseats_takes_nothing_back(
        store_at: Path | str, fs_root: Path) -> None:
    """The writer then breaks a link after the `caps.unvouched` note (a record edited in
    place), so that the note no longer stands: a refusal, like a grant, counts only where
    the chain is whole from it to the anchored head, so the genuine end stands. A process
    spawned after the break still runs."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        kernel.exit(pid, 3, "done")
    forge_rejected_exit(store_at, pid)
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert len(noted_spans(kernel)) == 1
        kernel.spawn("agent", caps=[PUB])  # (a record after the note, to edit)
        head = kernel.audit()[-1]["seq"]
    edit(store_at, "UPDATE audit SET ts=ts+1 WHERE seq=?", (head,))
    edit(store_at, REVIVE, (pid,))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        with pytest.raises(Conflict):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert len(_revived_notes(kernel, pid)) == 1
        neighbour = kernel.spawn("agent", caps=[PUB])
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
