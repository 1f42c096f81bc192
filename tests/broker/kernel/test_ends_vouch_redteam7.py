"""Red team 7 on the ends the chain records, counted only where the anchor vouches
(docs/DESIGN.md, invariant 15; broker/store/ends.py, links.py, capvouch.py). The attacker
writes the database (the SQLite file, and the lock file beside it) and holds no key.

* The lock file removed (or an older one put back): the open found "no anchor" (as a store
  from before signed anchors) and took the whole chain, so an end forged past the head ended
  a live process, a refusal forged past it took a genuine end back, a grant forged past it
  held, and the open signed past them for good. Fixed: the writer remembers its newest signed
  anchor in its key's directory (`broker.store.remembered`), which stands for the lock file.
* Records appended while a broker runs (after its open's span was settled), far past its
  head so that its own appends never collide with them: a look-up by pid later walks them.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from broker import Conflict, Kernel, NotCapable
from broker.store.audit import AuditRecord, record_hash
from broker.store.audit_rows import INSERT_AUDIT
from broker.store.connection import dump_json
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_rte_redteam import (
    _forge_vouching_record as forge_vouching_record,
)
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head, forge_host_kill
from tests.broker.kernel.test_process_revived_redteam import REVIVE, _revived_notes
from tests.conftest import anchor_problems, open_image

fs_root = links.fs_root
LOST = "the lock file has no signed anchor, but this user's key signed record"


def remove_lock(db: Path) -> None:
    os.unlink(str(db) + ".lock")


def lock_lost(kernel: Kernel) -> list[str]:
    return [p for p in anchor_problems(kernel) if LOST in p or "the lock file signed only" in p]


async def spawned(db: Path, fs_root: Path, *, exited: bool = False) -> tuple[int, int]:
    """A run that spawns a process (`exited`: the host ends it) and a neighbour."""
    async with Kernel.open(db, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        if exited:
            kernel.exit(pid, 3, "done")
        return pid, kernel.spawn("agent", caps=[PUB])


@pytest.mark.parametrize("put_back", [False, True], ids=["removed", "an older one put back"])
async def test_a_kill_forged_past_the_head_with_the_lock_file_removed_ends_nothing(
        db_path: Path, fs_root: Path, put_back: bool) -> None:
    """HIGH: any writer of the SQLite file ended any live, legitimate process for good. Over
    two opens: the first signs past the forgery, the next must still not count it."""
    lock = Path(str(db_path) + ".lock")
    pid, neighbour = await spawned(db_path, fs_root)
    older = lock.read_bytes()
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        later = kernel.spawn("agent", caps=[PUB])  # (a later run, signed further)
    forge_host_kill(db_path, pid)
    remove_lock(db_path)
    if put_back:
        lock.write_bytes(older)  # (genuinely signed, by this key, an earlier run)
    for _ in range(2):
        async with Kernel.open(db_path, fs_root=fs_root) as kernel:
            assert len(lock_lost(kernel)) == 1, anchor_problems(kernel)
            assert kernel.process(pid).alive, kernel.process(pid)
            assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
            for other in (neighbour, later):  # (the later run's grant, vouched by the memory)
                assert await kernel.call_tool(other, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_a_grant_forged_past_the_head_with_the_lock_file_removed_grants_nothing(
        db_path: Path, fs_root: Path) -> None:
    """HIGH, as the kill: a record vouching for a planted row (fs:/** read), appended after
    the head, then the lock file removed: the row grants nothing, at this open and the next
    (noted unvouched), and the process's genuine grant still reads."""
    pid, _ = await spawned(db_path, fs_root)
    forge_vouching_record(db_path, pid, linked=True)
    remove_lock(db_path)
    for _ in range(2):
        async with Kernel.open(db_path, fs_root=fs_root) as kernel:
            assert len(lock_lost(kernel)) == 1
            assert not [c for c in kernel.capabilities(pid) if c["id"] == "cap_forged"]
            with pytest.raises(NotCapable):
                await kernel.call_tool(pid, "read_file", {"path": "/data/other/f"})
            assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
            assert [r for r in kernel.audit() if r["syscall"] == "caps.unvouched"]


async def test_a_refusal_forged_past_the_head_with_the_lock_file_removed_takes_nothing_back(
        db_path: Path, fs_root: Path) -> None:
    """HIGH: a genuine end taken back, the row set runnable: the ended process is served."""
    pid, neighbour = await spawned(db_path, fs_root, exited=True)
    append_far_past(db_path, *refusals_of_exit(pid), gap=1)
    revive(db_path, pid)  # (plain SQLite: a store opened as the writer would note the span)
    remove_lock(db_path)
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        assert len(lock_lost(kernel)) == 1
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
        with pytest.raises(Conflict):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert len(_revived_notes(kernel, pid)) == 1


def revive(db: Path, pid: int) -> None:
    with sqlite3.connect(db) as con:
        con.execute(REVIVE, (pid,))
    con.close()


def append_far_past(db: Path, *records: AuditRecord, gap: int = 1_000_000) -> int:
    """`records` appended with plain SQLite while a broker runs, the first `gap` seqs past
    the head and linked to it, each after linked to the one before (the broker's own appends
    fill the seqs between); the last one's seq."""
    with sqlite3.connect(db) as con:
        head, prev, ts = con.execute(
            "SELECT seq, hash, ts FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq = head + gap - 1
        for record in records:
            seq, ts, detail = seq + 1, ts + 1, dump_json(record.detail)
            digest = record_hash(seq, ts, record, detail, prev)
            con.execute(INSERT_AUDIT, (seq, ts, record.pid, None, None, record.phase,
                                       record.syscall, None, None, None, detail, prev,
                                       digest, None))
            prev = digest
    con.close()
    return seq


def rewrite_head(db: Path, *records: AuditRecord) -> int:
    """The broker's newest records (as many as `records`) rewritten in place as `records`,
    hashed again, each linked to the one before (nothing follows them yet to break); the
    last one's seq."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT seq, prev_hash, ts FROM audit ORDER BY seq DESC LIMIT ?",
                           (len(records),)).fetchall()[::-1]
        prev = rows[0][1]
        for (seq, _, ts), record in zip(rows, records, strict=True):
            detail = dump_json(record.detail)
            digest = record_hash(seq, ts, record, detail, prev)
            con.execute("UPDATE audit SET pid=?, inv=NULL, tool=NULL, phase=?, syscall=?, "
                        "resource=NULL, args_hash=NULL, cap_id=NULL, detail=?, prev_hash=?, "
                        "hash=?, payload=NULL WHERE seq=?",
                        (record.pid, record.phase, record.syscall, detail, prev, digest, seq))
            prev = digest
    con.close()
    return int(rows[-1][0])


def refusals_of_exit(pid: int) -> list[AuditRecord]:
    """What takes a genuine `host.exit` back: a refusal of that act and of the `proc.end`
    written with its row (without `since`, as an older broker's)."""
    return [AuditRecord(phase="rejected", syscall=syscall, pid=pid, detail={"error": "CONFLICT"})
            for syscall in ("host.exit", "proc.end")]


@pytest.mark.parametrize("forge", [
    pytest.param(append_far_past, id="appended far past the head"),
    pytest.param(rewrite_head, id="the head rewritten")])
async def test_a_refusal_forged_while_the_broker_runs_takes_nothing_back_at_a_look_up(
        db_path: Path, fs_root: Path, forge: Callable[..., int]) -> None:
    """A process ended in an earlier run (not in the table); while the broker runs, a writer
    forges a refusal of its end and sets its row runnable: the look-up by pid that loads it
    must still find it ended (the refusal is not the broker's own), end it again and record
    it. A neighbour runs on. MEDIUM: the ended process was loaded live and served (holding
    no capabilities: its call was `NotCapable`, not `Revived`). Appended far past the head
    (the broker's own appends fill the seqs between): fixed, an end or a refusal past the
    writer's own head counts for nothing. The broker's own newest records rewritten in place
    as the refusals of the `host.exit` and of its `proc.end` (nothing follows them yet to
    break a link): fixed, a take-back counts only where the walk links up to the hash the
    writer holds for its head."""
    pid, neighbour = await spawned(db_path, fs_root, exited=True)
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        for _ in range(2):  # (two records the open's walk has not read, to rewrite as two)
            assert await kernel.call_tool(neighbour, "read_file",
                                          {"path": "/data/pub/f"}) == "pub"
        kernel.store.sign_anchor()
        forge(db_path, *refusals_of_exit(pid))
        revive(db_path, pid)
        with pytest.raises(Conflict):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert len(_revived_notes(kernel, pid)) == 1
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_a_pid_reused_after_its_row_was_deleted_is_not_ended_by_the_old_end(
        db_path: Path, fs_root: Path) -> None:
    """MEDIUM: the writer deletes the row of the newest process, which the host killed; the
    next process spawned, legitimate, gets its pid, and the next open ended it as revived
    (the chain's ends were counted by pid alone): only an end after the last record that
    made the process counts."""
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        await open_image(kernel)
        neighbour = kernel.spawn("agent", caps=[PUB])
        killed = kernel.spawn("agent", caps=[PUB])
        kernel.kill(killed)
    with sqlite3.connect(db_path) as con:
        con.execute("DELETE FROM processes WHERE pid=?", (killed,))
    con.close()
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        victim = kernel.spawn("agent", caps=[PUB])
        assert victim == killed  # (the deleted row's pid, reused)
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
        assert _revived_notes(kernel, victim) == []
        assert await kernel.call_tool(victim, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_a_spawn_forged_past_the_head_does_not_make_an_ended_pid_new(
        store_at: Path | str, fs_root: Path) -> None:
    """The other side of counting ends only after the record that made a process: a
    `host.spawn` of an ended pid forged past the head counts for nothing (noted
    `caps.unvouched`, so not later either), and the row set runnable stays dead."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        kernel.kill(pid)
    append_past_head(store_at, AuditRecord(phase="admin", syscall="host.spawn", pid=pid,
                                           detail={"who": "host", "image": "agent"}))
    edit(store_at, REVIVE, (pid,))
    for opened in (1, 2):  # (the first open signs past the forgery)
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            with pytest.raises(Conflict):
                await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
            assert len(_revived_notes(kernel, pid)) == opened
            spawned = kernel.spawn("agent", caps=[PUB])
            assert await kernel.call_tool(spawned, "read_file", {"path": "/data/pub/f"}) == "pub"
        edit(store_at, REVIVE, (pid,))
