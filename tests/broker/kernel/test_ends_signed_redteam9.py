"""Red team 9 on lane sharedvouch x endschain: in a shared PostgreSQL store an end counts
only signed by a trusted key (DESIGN invariant 15, §9), and the signature (`audit.sig`) lies
outside the record's hash. A database writer holding no key sets the `sig` of a genuine
broker's end records (the `host.exit` and its `proc.end`) to NULL and the process's row
runnable again: the chain stays whole, and the ends counted for nothing, so the process a
host ended was served again with its grants (HIGH: a surgical revival).

Fixed (the lead's choice): an unsigned end past the marker cannot be told from a forged one,
so it ends nothing (no reason or result of it is taken) but holds the process: not run, a
call on it refused (`Conflict`), named once by the open's `caps.unsigned` note and by
`audit --verify`. A signed end still ends; a live neighbour still runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Conflict, Kernel
from broker.store.audit import AuditRecord
from broker.store.ends import ENDING
from broker.store.recordsig import UNSIGNED
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_capability_shared_signed_redteam import fs  # noqa: F401
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.broker.kernel.test_process_revived_redteam import REVIVE
from tests.broker.store.conftest import raw
from tests.conftest import open_image


def _strip_end_signatures(dsn: str, pid: int) -> list[int]:
    """NULL the `sig` of the records that ended `pid` (their hashes untouched)."""
    marks = ",".join("?" * len(ENDING))
    with raw(dsn) as db:
        seqs = [r[0] for r in db.execute(
            f"SELECT seq FROM audit WHERE syscall IN ({marks}) AND sig IS NOT NULL"
            " AND (pid=? OR detail LIKE ?)", (*ENDING, pid, f'%"pid": {pid}%')).fetchall()]
        for seq in seqs:
            db.execute("UPDATE audit SET sig=NULL WHERE seq=?", (seq,))
    return seqs


async def spawned_by_a(dsn: str, fs_root: Path, *, exited: bool = False) -> int:
    """Broker a spawns a process reading /data/pub (`exited`: the host ends it)."""
    async with Kernel.open(dsn, fs_root=fs_root, broker="a") as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/data/pub/**:read"])
        if exited:
            kernel.exit(pid, 3, "done")
    return pid


async def test_a_genuine_end_stripped_of_its_signature_holds_the_process(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    ended = await spawned_by_a(pg_database, fs, exited=True)
    neighbour = await spawned_by_a(pg_database, fs)
    stripped = _strip_end_signatures(pg_database, ended)
    assert stripped
    edit(pg_database, REVIVE, (ended,))
    for broker in ("b", "c"):  # (named once: the second open's walk reads the note)
        async with Kernel.open(pg_database, fs_root=fs, broker=broker) as kernel:
            with pytest.raises(Conflict, match="held for an unsigned end"):
                await kernel.call_tool(ended, "read_file", {"path": "/data/pub/f"})
            assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}
                                          ) == "pub"
            notes = [r["detail"] for r in kernel.audit() if r["syscall"] == UNSIGNED]
            assert [n.get("held") for n in notes] == [[ended]]
            assert set(stripped) <= set(notes[0]["records"])
            assert any(line.startswith(f"process {ended}: held for an unsigned end")
                       for line in kernel.verify_audit()[1])


async def test_a_forged_exit_gives_no_exit_value(pg_database: str, fs: Path  # noqa: F811
                                                 ) -> None:
    """An unsigned `host.exit` carrying a code and a result, appended at the head for a live
    process: it is held; its row keeps no code, result or reason from the forgery."""
    pid = await spawned_by_a(pg_database, fs)
    forged = append_past_head(pg_database, AuditRecord(
        phase="admin", syscall="host.exit", pid=pid,
        detail={"code": 0, "result": "forged", "reason": "forged"}))
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        with pytest.raises(Conflict, match=f"record {forged} would end it"):
            kernel.process(pid)
        [note] = [r["detail"] for r in kernel.audit() if r["syscall"] == UNSIGNED]
        assert note["held"] == [pid]
    with raw(pg_database) as db:
        state, code, result, reason = db.execute(
            "SELECT state, exit_code, result, reason FROM processes WHERE pid=?", (pid,)
        ).fetchone()
    assert (state, code) == ("runnable", None)
    assert "forged" not in f"{result} {reason}"


async def test_a_genuine_end_signed_keeps_its_row_ended(pg_database: str, fs: Path  # noqa: F811
                                                        ) -> None:
    """The neighbour: the same revival with the signatures left in place is refused."""
    ended = await spawned_by_a(pg_database, fs, exited=True)
    edit(pg_database, REVIVE, (ended,))
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        with pytest.raises(Conflict):
            await kernel.call_tool(ended, "read_file", {"path": "/data/pub/f"})
