"""A process held for an unsigned end (shared mode, `revived.Held`) and killed by the host
(lane heldbits, after lane heldkill): its end is said in a `state` event as every kill's is
(it said none: a follower of the events never learned it ended), and the broker that found it
held stops skipping it (`Leasing.unrun`) once it ended, another broker took it, or the chain
no longer holds it (the set only grew). Real PostgreSQL, two brokers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker import Kernel
from tests.broker.kernel.test_capability_shared_signed_redteam import fs  # noqa: F401
from tests.broker.kernel.test_held_redteam11 import _forge_end, _parent_and_child


def _states(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [e["data"] for e in kernel.store.events(pid=pid) if e["kind"] == "state"]


async def test_the_host_s_kill_of_a_held_process_says_its_end(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    parent, child = await _parent_and_child(pg_database, fs)
    _forge_end(pg_database, parent)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        before = _states(kernel, parent)
        kernel.kill(parent, "the host stops it")
        said = _states(kernel, parent)[len(before):]
        assert said == [{"old": before[-1]["new"], "new": "killed",
                         "reason": "the host stops it", "held": True}], said
        # (its live child's end is said too, as before, and first: children end first)
        child_end = [e for e in kernel.store.events() if e["kind"] == "state"
                     and e["data"]["new"] == "killed"]
        assert [e["pid"] for e in child_end] == [child, parent]


async def _found_held(b: Kernel, child: int) -> None:
    for _ in range(40):  # (the claim is random, 4 a look: the held child is found)
        b.leasing.tick()
        if child in b.leasing.unrun:
            break
    assert b.leasing.unrun == {child}
    b.leasing.renew()  # still held, by nobody: still skipped
    assert b.leasing.unrun == {child}


async def test_a_held_process_is_no_longer_skipped_once_it_ended(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    parent, child = await _parent_and_child(pg_database, fs)
    _forge_end(pg_database, child)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        await _found_held(b, child)
        async with Kernel.open(pg_database, fs_root=fs, broker="c") as c:
            c.kill(child, "another broker's host")  # (c never looked for work)
        b.leasing.renew()
        assert b.leasing.unrun == set()
        # (the neighbour: its parent, taken by b, runs on)
        assert await b.call_tool(parent, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_a_held_process_another_broker_took_is_no_longer_skipped(
        pg_database: str, fs: Path) -> None:  # noqa: F811
    _, child = await _parent_and_child(pg_database, fs)
    _forge_end(pg_database, child)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as b:
        await _found_held(b, child)
        # (a broker that trusts the end's signer, say, runs it: its lease, unexpired)
        b.store.take_lease(child, "c", 60.0)
        b.leasing.renew()
        assert b.leasing.unrun == set()
