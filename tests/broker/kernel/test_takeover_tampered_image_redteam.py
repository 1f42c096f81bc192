"""Red team: a process taken over from another broker (a lease takeover: `recovery.resume`)
whose stored image was edited behind the chain's back (its deny rule dropped). Its taking
used to raise `Tampered` out of the taking broker's lease task, which ended that broker (a
denial of service by one edited row). It is now ended as the open's recovery ends one
(killed, the reason naming the image's problem, an `audit.anchor` record), and the broker
goes on: a neighbour process on a genuine image, left by the same broker, is taken and
finishes; the taker lets go of the ended one's lease (it held and renewed it for good). PostgreSQL
only (leases are)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from broker.kernel.image import AgentImage
from tests.broker.kernel.test_leasing import NEEDS, Parked, _until, script
from tests.broker.store.conftest import raw

DENY = {"kind": "fs", "scope": "/secret/**", "rights": ["read"], "effect": "deny"}
EDITED = "is stored otherwise than it was registered"
CAPS = ["fs:/**:read,write"]


def _drop_denies(dsn: str) -> None:
    with raw(dsn) as db:
        [(spec,)] = db.execute("SELECT spec FROM images WHERE name='target'").fetchall()
        spec = {**json.loads(spec), "denies": []}
        db.execute("UPDATE images SET spec=? WHERE name='target'", (json.dumps(spec),))


def _anchors(kernel: Kernel) -> list[Any]:
    return [r["detail"]["problem"] for r in kernel.audit()
            if r["syscall"] == "audit.anchor" and "problem" in r["detail"]]


async def test_a_taken_process_whose_image_was_edited_is_ended_not_the_broker(
        pg_database: str, tmp_path: Path) -> None:
    writes = script({"tool": "write_file", "args": {"path": "/done.txt", "data": "ok"}})
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="a",
                           planners=lambda image, pid: Parked()) as a:
        await a.register_image(AgentImage("target", tools=("read_file",), needs=NEEDS,
                                          denies=(DENY,), planner=writes))
        await a.register_image(AgentImage("worker", tools=("write_file",), needs=NEEDS,
                                          planner=writes))
        target = a.spawn("target", caps=CAPS)
        worker = a.spawn("worker", caps=CAPS)
    _drop_denies(pg_database)  # while no broker runs them: the next to take them loads it

    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="b") as b:
        with trio.fail_after(15):
            status = await b.wait(worker)  # the neighbour, taken and finished
        assert status["state"] == "exited" and status["exit_code"] == 0
        await _until(lambda: b.store.get_process(target)["state"] != "runnable")
        row = b.store.get_process(target)
        assert row["state"] == "killed" and EDITED in row["reason"], row
        ended = [p for p in _anchors(b) if p.startswith(f"process {target} ended")]
        assert len(ended) == 1 and EDITED in ended[0], _anchors(b)
        assert (tmp_path / "fs" / "done.txt").read_text() == "ok"  # the worker's, not its
        # Its lease let go: not held (renewed) by b for a process it ended.
        assert target not in b.leasing.held
