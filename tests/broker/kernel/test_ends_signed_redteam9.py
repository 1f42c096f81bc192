"""Red team 9 on lane sharedvouch x endschain: in a shared PostgreSQL store an end counts
only signed by a trusted key (DESIGN invariant 15, §9), and the signature (`audit.sig`) lies
outside the record's hash. A database writer holding no key sets the `sig` of a genuine
broker's end records (the `host.exit` and its `proc.end`) to NULL and the process's row
runnable again: the chain stays whole (no link broken, no grant before it lost, unlike
deleting the end record), the ends count for nothing, and the process a host ended is served
again with its grants (HIGH: a surgical revival; it is noted only as `caps.unsigned`).

Not fixed: the stripped signature cannot be told from a forged end's missing one, so the fix
is a choice of DESIGN: an unsigned end (not a take-back) could count, failing closed as a
record forged between vouched ones does for a single writer; a forged kill then ends a live
process, which the same writer can do anyway by setting its row ended, but
`test_capability_shared_signed_redteam.py` pins the opposite.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Conflict, Kernel
from broker.store.ends import ENDING
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_capability_shared_signed_redteam import fs  # noqa: F401
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


@pytest.mark.xfail(strict=True, reason="red team 9 HIGH, not fixed: a genuine end whose "
                   "signature a writer removed counts for nothing in shared mode, so its row "
                   "set runnable is served (DESIGN §9)")
async def test_a_genuine_end_stripped_of_its_signature_still_ends(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    ended = await spawned_by_a(pg_database, fs, exited=True)
    assert _strip_end_signatures(pg_database, ended)
    edit(pg_database, REVIVE, (ended,))
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        with pytest.raises(Conflict):
            await kernel.call_tool(ended, "read_file", {"path": "/data/pub/f"})


async def test_a_genuine_end_signed_keeps_its_row_ended(pg_database: str, fs: Path  # noqa: F811
                                                        ) -> None:
    """The neighbour: the same revival with the signatures left in place is refused."""
    ended = await spawned_by_a(pg_database, fs, exited=True)
    edit(pg_database, REVIVE, (ended,))
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        with pytest.raises(Conflict):
            await kernel.call_tool(ended, "read_file", {"path": "/data/pub/f"})
