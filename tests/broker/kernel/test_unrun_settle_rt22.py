"""Red team 22 on lane heldbits' `Leasing._settle_unrun` (run at each lease renewal): a
database writer without the key forges an unsigned end of a live process (it is held, and a
sharing broker that looked for work skips it: `Leasing.unrun`), then edits that process's row
so it no longer reads back (its `usage` not an object). The settle read the row
(`get_process`), its `Unreadable` went out of `renew` and `tick`, and out of the broker's
lease task: every lease it held (the neighbours it runs) went unrenewed, the broker's task
gone. Now a row that cannot be read back is left as it was found (held: still skipped,
settled again once it reads back), and the renewal goes on."""

from __future__ import annotations

from pathlib import Path

from broker import Kernel
from tests.broker.kernel.test_capability_shared_signed_redteam import fs  # noqa: F401
from tests.broker.kernel.test_held_kill_said import _found_held
from tests.broker.kernel.test_held_redteam11 import _forge_end, _parent_and_child
from tests.broker.store.conftest import raw


async def test_an_unreadable_held_row_does_not_stop_the_lease_renewal(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    parent, child = await _parent_and_child(pg_database, fs)
    _forge_end(pg_database, child)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        await _found_held(b, child)
        with raw(pg_database) as db:
            db.execute("UPDATE processes SET usage=? WHERE pid=?", ("[]", child))
        b.leasing.renew()  # (it raised Unreadable: no lease renewed)
        b.leasing.tick()
        assert b.leasing.unrun == {child}  # (still not run, still skipped)
        # (the neighbour, taken by b, runs on, its lease renewed)
        assert parent in b.leasing.held
        assert await b.call_tool(parent, "read_file", {"path": "/data/pub/f"}) == "pub"
