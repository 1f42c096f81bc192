"""Red team: a process killed under one broker (its end in the chain), its row set runnable
again by whoever writes the database, taken over by another broker (a lease takeover:
`recovery.resume`). It is ended again, recorded once, its lease let go; a neighbour left by
the same broker is taken and finishes. PostgreSQL only (leases are)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from broker.kernel.image import AgentImage
from tests.broker.kernel.test_leasing import NEEDS, Parked, _until, script
from tests.broker.store.conftest import raw

CAPS = ["fs:/**:read,write"]


def _anchors(kernel: Kernel) -> list[Any]:
    return [r["detail"]["problem"] for r in kernel.audit()
            if r["syscall"] == "audit.anchor" and "problem" in r["detail"]]


async def test_a_killed_process_set_runnable_is_ended_again_at_takeover(
        pg_database: str, tmp_path: Path) -> None:
    writes = script({"tool": "write_file", "args": {"path": "/done.txt", "data": "ok"}})
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="a",
                           planners=lambda image, pid: Parked()) as a:
        await a.register_image(AgentImage("target", tools=("write_file",), needs=NEEDS,
                                          planner=script({"tool": "write_file", "args": {
                                              "path": "/target.txt", "data": "revived"}})))
        await a.register_image(AgentImage("worker", tools=("write_file",), needs=NEEDS,
                                          planner=writes))
        target = a.spawn("target", caps=CAPS)
        worker = a.spawn("worker", caps=CAPS)
        a.kill(target)
    with raw(pg_database) as db:
        db.execute("UPDATE processes SET state='runnable', reason=NULL WHERE pid=?", (target,))

    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="b") as b:
        with trio.fail_after(15):
            status = await b.wait(worker)  # the neighbour, taken and finished
        assert status["state"] == "exited" and status["exit_code"] == 0
        await _until(lambda: b.store.get_process(target)["state"] != "runnable")
        row = b.store.get_process(target)
        assert row["state"] == "killed" and "revived" in row["reason"], row
        ended = [p for p in _anchors(b) if p.startswith(f"process {target} was ended")]
        assert len(ended) == 1, _anchors(b)
        assert (tmp_path / "fs" / "done.txt").read_text() == "ok"
        assert not (tmp_path / "fs" / "target.txt").exists()  # it never ran again
        assert target not in b.leasing.held
