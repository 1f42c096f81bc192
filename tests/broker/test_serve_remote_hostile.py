"""The embedding API on another broker's process, with the store written behind the brokers'
backs (anyone with write access to the database): what it reads from the store is bounded,
and a store that lies gets a typed error, never a hang."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from broker import Conflict, Kernel
from broker.kernel.image import AgentImage
from tests.broker.store.conftest import raw
from tests.broker.test_serve import Parked, broker, query, until

NAPPER = AgentImage("napper", tools=("sleep",), needs=("clock:*:sleep",),
                    planner={"kind": "scripted", "actions": [
                        {"tool": "sleep", "args": {"seconds": 0.2}}] * 200})


async def test_a_lineage_loop_written_into_the_store_is_a_typed_error(pg_database: str,
                                                                       tmp_path: Path) -> None:
    async with Kernel.open(pg_database, broker="seed", planners=lambda image, pid: Parked(),
                           fs_root=tmp_path / "seed") as seed:
        await seed.register_image(NAPPER)
        looped = seed.spawn("napper", caps=["clock:*:sleep"])
        honest = seed.spawn("napper", caps=["clock:*:sleep"])
    a = broker(pg_database, "a", "--lease", "60")
    try:
        await until(lambda: len(query(pg_database, "SELECT pid FROM leases WHERE holder='a'"
                                      " AND expires > 0")) == 2, 30, "a to take both")
        with raw(pg_database) as db:  # its own parent: a loop no spawn can make
            db.execute("UPDATE processes SET parent=? WHERE pid=?", (looped, looped))
        async with Kernel.open(pg_database, broker="b", fs_root=tmp_path / "b") as b:
            with trio.fail_after(10):
                with pytest.raises(Conflict, match="lineage"):
                    await trio.to_thread.run_sync(b.process_info, looped,
                                                  abandon_on_cancel=True)
            info = b.process_info(honest)  # the neighbour still reads
            assert info["broker"] == "a" and info["lineage"] == []
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(10)
