"""Red team (rt/holes) of 5ea31f1 (a spawn whose grants fail leaves no half-made process): the
process row is committed before its grants, and a spawn whose grants fail ends that row only
with a deferred write ("with the next commit"). A kill -9 before that commit (the host told
Conflict, "nothing of it was done") leaves the row `created`, and a restart reloads a
`created` process as runnable: a process nobody was given comes back, with no grants. Real
SQLite; the crash is a copy of what is committed (SQLite's backup) opened by a new broker.

Its two strict xfails (a spawn whose grants committed and whose move to runnable then failed)
pass since fix/holes: the move is written in the grants' transaction, and nothing after that
commit writes before the spawn returns."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker import AgentImage, Conflict, Kernel, LibosError
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_host_store_faults import CAPS
from tests.conftest import open_image


def _committed(db: Path, to: Path) -> None:
    """What a kill -9 now would leave: the committed database (no open transaction)."""
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()


async def test_a_spawn_that_failed_is_not_alive_after_a_crash(
        kernel: Kernel, fault: Fault, db_path: Path, tmp_path: Path) -> None:
    fault.install("capabilities")
    await kernel.register_image(AgentImage("clock", tools=("sleep", "now"), needs=tuple(CAPS)))
    before = {p["pid"] for p in kernel.store.list_processes()}
    fault.set(True)
    with pytest.raises(Conflict):
        kernel.spawn("clock", caps=CAPS)
    fault.set(False)
    _committed(db_path, tmp_path / "after-crash.db")
    async with Kernel.open(tmp_path / "after-crash.db") as restarted:
        alive = [(p["pid"], p["state"]) for p in restarted.store.list_processes()
                 if p["pid"] not in before and p["state"] not in ("killed", "exited")]
        assert alive == [], alive
        assert [p["pid"] for p in restarted.ps() if p["state"] not in ("killed", "exited")] \
            == []


async def test_a_host_spawn_told_conflict_is_not_audited_as_done(kernel: Kernel,
                                                                 fault: Fault) -> None:
    """The grants and the `host.spawn` record are one transaction; the move to runnable that
    follows is another. When only the move fails the host is told Conflict ("nothing of it
    was done") while the chain keeps a `host.spawn` record of a process that never ran and
    whose end (`_unmake`'s deferred 'killed') no record tells."""
    fault.install(updates=("processes",))
    await kernel.register_image(AgentImage("clock", tools=("sleep", "now"), needs=tuple(CAPS)))
    fault.set(True)
    with pytest.raises(Conflict):
        kernel.spawn("clock", caps=CAPS)
    fault.set(False)
    kernel.checkpoint(kernel.spawn("clock", caps=CAPS))  # a commit: the deferred end lands
    spawned = [r for r in kernel.audit() if r["syscall"] == "host.spawn"]
    ended = {r["pid"] for r in kernel.audit()
             if r["pid"] is not None and r["syscall"] != "host.spawn"}
    told = [r["pid"] for r in spawned if r["pid"] not in ended
            and kernel.store.get_process(r["pid"])["state"] == "killed"]
    assert told == [], f"audited as spawned, told Conflict, killed unrecorded: {told}"


async def test_a_child_spawn_told_failed_gives_its_parent_its_uses_back(
        kernel: Kernel, fault: Fault) -> None:
    """As test_host_store_faults' grants case, but the grants stored and the child's move to
    runnable failing: the parent is told the spawn failed, and has lost the uses it carved."""
    await open_image(kernel)
    counted = {"kind": "fs", "scope": "/data/**", "rights": ["read"], "uses": 5}
    parent = kernel.spawn("agent", caps=[counted, "proc:agent:spawn"])
    fault.install(updates=("processes",))
    fault.set(True)
    with pytest.raises(LibosError):
        await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [{**counted,
                                                                              "uses": 2}]})
    fault.set(False)
    assert [p["pid"] for p in kernel.ps() if p["state"] not in ("killed", "exited")] == [parent]
    assert [c["uses"] for c in kernel.capabilities(parent) if c["kind"] == "fs"] == [5]


async def test_a_spawn_whose_event_cannot_be_stored_yet_is_done(kernel: Kernel,
                                                                fault: Fault) -> None:
    """Its grants, record and move to runnable committed, only its `spawn` event's write
    failing: the host was told Conflict while the chain kept its `host.spawn` record (and the
    process was killed, unrecorded). Now the spawn is done, and its events are stored, in
    order, once the store heals."""
    fault.install("events")
    await kernel.register_image(AgentImage("clock", tools=("sleep", "now"), needs=tuple(CAPS)))
    fault.set(True)
    pid = kernel.spawn("clock", caps=CAPS)
    fault.set(False)
    assert kernel.process(pid).alive and kernel.store.get_process(pid)["state"] == "runnable"
    kernel.events.flush()
    assert [(e["kind"], e["data"].get("new")) for e in kernel.store.events(pid=pid)] == [
        ("spawn", None), ("state", "runnable")]
    assert kernel.verify_audit()[1] == []
