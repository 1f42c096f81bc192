"""Red team 11 on lane sharedsig (DESIGN invariant 15, §9): in a shared PostgreSQL store an
unsigned end past the `audit.signed` marker holds its process (`revived.Held`: not ended,
not run). A database writer holding no key appends such an end for a child.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel
from broker.kernel.end_result import ForgedResult
from broker.kernel.revived import Held, Revived
from broker.store.audit import AuditRecord
from tests.broker.kernel.test_capability_shared_signed_redteam import fs  # noqa: F401
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.broker.store.conftest import raw
from tests.conftest import anchor_problems, open_image

PUB = "fs:/data/pub/**:read"


def _forge_end(dsn: str, pid: int) -> int:
    """An unsigned `proc.end` of `pid`, intact and linked, at the head (no key needed)."""
    return append_past_head(dsn, AuditRecord(phase="admin", syscall="proc.end", pid=pid,
                                             detail={"state": "killed", "reason": "forged"}))


async def _parent_and_child(dsn: str, fs_root: Path) -> tuple[int, int]:
    async with Kernel.open(dsn, fs_root=fs_root, broker="a") as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=[PUB, "proc:agent:spawn"])
        child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [PUB]})
    return parent, child


def _state(dsn: str, pid: int) -> str:
    with raw(dsn) as db:
        return db.execute("SELECT state FROM processes WHERE pid=?", (pid,)).fetchone()[0]


async def test_a_held_child_does_not_make_its_parent_unkillable(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    """HIGH: a writer appends an unsigned end of a live child. The child is held (right),
    but the host's kill of its parent walked the tree, loaded the held child (`if_live`
    through the lease: `Held` raised) and failed whole: the parent ran on, and so would
    every later kill of it (the host's, a spent budget's, a time limit's) fail, the child
    staying held for good. The kill switch of any process is so taken away by one row."""
    parent, child = await _parent_and_child(pg_database, fs)
    _forge_end(pg_database, child)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        kernel.kill(parent)
        assert not kernel.process(parent).alive
    assert _state(pg_database, parent) == "killed"
    async with Kernel.open(pg_database, fs_root=fs, broker="c") as kernel:
        # The parent's signed kill ends the child on the record (the chain's lineage): no
        # longer held, its live row ended again as it loads.
        with pytest.raises(Revived):
            kernel.process(child)
    assert _state(pg_database, child) == "killed"


async def test_the_host_s_kill_of_a_held_process_ends_its_live_children(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    """LOW: a writer holds the root of a running tree (an unsigned end of it). Its children
    ran on (not held: an end is no kill), and the host's kill of the root, the one act that
    stops the tree, was refused (`Held`): each child had to be found and killed by pid. Now
    the host may kill a held process: its own act, recorded and signed by this broker, ends
    the held row with the host's reason (nothing of the unsigned end taken) and the tree
    below it. A pause of it is still refused (`Held`, recorded); a neighbour runs on."""
    parent, child = await _parent_and_child(pg_database, fs)
    _forge_end(pg_database, parent)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        assert await kernel.call_tool(child, "read_file", {"path": "/data/pub/f"}) == "pub"
        with pytest.raises(Held):
            kernel.pause(parent)
        kernel.kill(parent, "the host stops the tree")
        assert not kernel.process(child).alive
        neighbour = kernel.spawn("agent", caps=[PUB])
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
        controls = [(r["phase"], r["detail"]["signal"]) for r in kernel.audit()
                    if r["syscall"] == "proc.signal" and r["pid"] == parent]
        assert controls == [("rejected", "pause"), ("admin", "kill")]
    assert _state(pg_database, child) == "killed"
    with raw(pg_database) as db:
        assert db.execute("SELECT sig FROM audit WHERE syscall='proc.signal' AND phase='admin'"
                          " AND pid=?", (parent,)).fetchone()[0]  # signed: it ends, counted
    async with Kernel.open(pg_database, fs_root=fs, broker="c") as kernel:
        ended = await kernel.wait(parent)  # no longer held: ended by the host's record
        assert (ended["state"], ended["reason"], ended["exit_code"], ended["result"]) == (
            "killed", "the host stops the tree", None, None)


async def test_the_operator_s_kill_through_the_store_ends_a_held_process(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    """`libos kill` (a request in the store) of a held process was taken by no broker (each
    takes those of the processes it runs, and nobody runs a held one): it waited for ever.
    Now a broker that found it held takes it and kills it; a pause of it is answered `Held`
    (told to the command that asked)."""
    parent, child = await _parent_and_child(pg_database, fs)
    _forge_end(pg_database, parent)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        assert await kernel.call_tool(child, "read_file", {"path": "/data/pub/f"}) == "pub"
        pause, kill = (kernel.store.add_control(verb, parent) for verb in ("pause", "kill"))
        kernel.leasing.tick()  # looks for work: finds the parent held
        kernel.controls.apply()
        assert kernel.store.control_result(pause)["error"] == Held.code
        assert kernel.store.control_result(kill) == {"applied": True}
        assert not kernel.process(child).alive
    assert (_state(pg_database, parent), _state(pg_database, child)) == ("killed", "killed")


async def test_a_parent_s_wait_does_not_return_a_result_a_writer_put_in_the_row(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    """MEDIUM (asked: what does the parent's wait return?). A held child's wait is refused
    (`Held`). But a child that ended for real, signed, was read back from its row: a writer
    who rewrites the row's result (no record touched, no end forged) had the parent's
    `proc.wait` hand the parent agent its text as the child's answer. Now the `proc.end`
    record carries the result's digest: the wait is refused (`ForgedResult`), recorded."""
    parent, child = await _parent_and_child(pg_database, fs)
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as kernel:
        kernel.exit(child, 0, "genuine")
    with raw(pg_database) as db:
        db.execute("UPDATE processes SET result=? WHERE pid=?", ('"forged"', child))
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        with pytest.raises(ForgedResult):
            await kernel.call_tool(parent, "wait", {"pid": child})
        assert [p for p in anchor_problems(kernel) if f"process {child}'s result" in p]


async def test_a_signed_end_s_genuine_result_is_delivered(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    """(The neighbour: the same wait, the row untouched.)"""
    parent, child = await _parent_and_child(pg_database, fs)
    async with Kernel.open(pg_database, fs_root=fs, broker="a") as kernel:
        kernel.exit(child, 0, "genuine")
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        ended = await kernel.call_tool(parent, "wait", {"pid": child})
    assert ended["result"] == "genuine"
