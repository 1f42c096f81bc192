"""Two brokers over one PostgreSQL store, in one trio run: a process whose broker closed is
taken by the other and finishes from its checkpoint; a broker whose lease was taken (as if
it froze past the expiry) has its process's next write refused by fencing, gives the process
up, and the other broker finishes it; a broker identity is one broker; and SQLite refuses
an identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import InvalidArgument, Kernel
from broker.kernel.image import AgentImage
from broker.planner import Exit
from broker.store.opening import open_store
from broker.store.postgres import DuplicateBroker
from tests.broker.store.conftest import raw

NEEDS = ("fs:/**:read,write", "clock:*:read,sleep")


def script(*actions: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "scripted", "actions": list(actions)}


class Parked:
    """A planner that never acts: the process waits for a broker that builds its planner
    from its image."""

    async def next_action(self, history: Any) -> Exit:
        await trio.sleep_forever()
        raise AssertionError


async def _until(check: Any, seconds: float = 15) -> None:
    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.02)


def _steps(dsn: str, pid: int, syscall: str) -> int:
    with raw(dsn) as db:
        return db.execute("SELECT COUNT(*) FROM audit WHERE pid=? AND syscall=? AND"
                          " phase='intent'", (pid, syscall)).fetchone()[0]


async def test_a_process_left_by_a_closed_broker_is_taken_and_finishes(
        pg_database: str, tmp_path: Path) -> None:
    image = AgentImage("worker", tools=("write_file",), needs=NEEDS, planner=script(
        {"tool": "write_file", "args": {"path": "/a.txt", "data": "one"}},
        {"tool": "write_file", "args": {"path": "/b.txt", "data": "two"}}))
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="a",
                           planners=lambda image, pid: Parked()) as a:
        await a.register_image(image)
        pid = a.spawn("worker", caps=["fs:/**:read,write"])
        assert a.leasing.mine(pid) and a.store.lease_of(pid).holder == "a"
    # Closed: its lease was given back at once (not left to expire).
    assert open_store(pg_database, writer=False).lease_of(pid).expires == 0
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="b") as b:
        with trio.fail_after(15):
            status = await b.wait(pid)
        assert status["state"] == "exited" and status["exit_code"] == 0
        assert b.store.lease_of(pid).holder == "b"
        assert (tmp_path / "fs" / "b.txt").read_text() == "two"
        count, problems = b.store.audit_problems()
        assert problems == [] and count > 0
    assert _steps(pg_database, pid, "fs.write") == 2  # each once: nothing repeated


async def test_a_broker_that_lost_its_lease_is_fenced_and_gives_the_process_up(
        pg_database: str, tmp_path: Path) -> None:
    image = AgentImage("sleeper", tools=("sleep", "write_file"), needs=NEEDS, planner=script(
        {"tool": "write_file", "args": {"path": "/before.txt", "data": "x"}},
        {"tool": "sleep", "args": {"seconds": 1.0}},
        {"tool": "write_file", "args": {"path": "/after.txt", "data": "y"}}))
    async with Kernel.open(pg_database, fs_root=tmp_path / "a", broker="a") as a:
        await a.register_image(image)
        pid = a.spawn("sleeper", caps=["fs:/**:read,write", "clock:*:sleep"])
        await _until(lambda: (tmp_path / "a" / "before.txt").exists())
        await trio.sleep(0.2)  # in its sleep now
        # Broker a "froze" past its lease: it expired, and broker b takes the process.
        with raw(pg_database) as db:
            db.execute("UPDATE leases SET expires=0 WHERE pid=?", (pid,))
        async with Kernel.open(pg_database, fs_root=tmp_path / "b", broker="b") as b:
            await _until(lambda: b.leasing.mine(pid))
            # a wakes: its next write for the process (the sleep's outcome) is refused.
            await _until(lambda: pid in dict(a.leasing.given_up))
            assert "lease 1" in dict(a.leasing.given_up)[pid]
            assert a.loaded(pid) is None and not a.leasing.mine(pid)
            with trio.fail_after(15):
                status = await b.wait(pid)
            assert status["state"] == "exited" and status["exit_code"] == 0
    assert not (tmp_path / "a" / "after.txt").exists()
    assert (tmp_path / "b" / "after.txt").read_text() == "y"
    assert _steps(pg_database, pid, "fs.write") == 2
    with raw(pg_database) as db:  # the sleep a cut off is closed as unknown by b
        unknown = db.execute("SELECT COUNT(*) FROM audit WHERE pid=? AND phase='outcome' AND"
                             " detail LIKE '%OUTCOME_UNKNOWN%'", (pid,)).fetchone()[0]
    assert unknown >= 1


async def test_one_identity_is_one_broker(pg_database: str, tmp_path: Path) -> None:
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="same") as a:
        with pytest.raises(DuplicateBroker, match="identity 'same'"):
            async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="same"):
                pass
        # A neighbour with another identity opens beside it.
        async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="other") as b:
            assert a.leasing.active and b.leasing.active
    with pytest.raises(InvalidArgument, match="identity"):
        async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="no spaces"):
            pass


async def test_sqlite_takes_no_identity(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="PostgreSQL"):
        async with Kernel.open(tmp_path / "libos.db", broker="a"):
            pass
    assert not (tmp_path / "libos.db").exists()
