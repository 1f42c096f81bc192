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


async def test_a_name_claimed_in_a_control_row_is_recorded_as_a_claim(pg_database: str,
                                                                       tmp_path: Path) -> None:
    """A control row came by the database: the name in it is recorded as what the store said
    (`via: store`), never as the broker's own host's act."""
    async with Kernel.open(pg_database, broker="a", planners=lambda image, pid: Parked(),
                           fs_root=tmp_path / "a") as a:
        await a.register_image(NAPPER)
        claimed = a.spawn("napper", caps=["clock:*:sleep"])
        own = a.spawn("napper", caps=["clock:*:sleep"])
        # Signed by a key the broker trusts (an unsigned row is refused outright:
        # `test_forged_control_redteam15`), the name in it is still only what it says.
        a.store.add_control("pause", claimed, {"who": "host"})
        await until(lambda: signals(pg_database, claimed), 10, "a to apply the control")
        a.pause(own)  # the neighbour: the host's own act, no channel to name
        assert signals(pg_database, claimed) == [("admin", "pause", "host", "store")]
        assert signals(pg_database, own) == [("admin", "pause", "host", None)]
        assert a.store.holds_of(claimed) == {"operator"}  # applied as the operator's hold


def signals(dsn: str, pid: int) -> list[tuple[str, str, str, str | None]]:
    return query(dsn, "SELECT phase, detail::json->>'signal', detail::json->>'who',"
                 " detail::json->>'via' FROM audit WHERE pid=? AND syscall='proc.signal'"
                 " ORDER BY seq", (pid,))
