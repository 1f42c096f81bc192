"""Red team: a process killed under one broker (its end in the chain), its row set runnable
again by whoever writes the database, taken over by another broker (a lease takeover:
`recovery.resume`). It is ended again, recorded once, its lease let go; a neighbour left by
the same broker is taken and finishes. PostgreSQL only (leases are)."""

from __future__ import annotations

from pathlib import Path

from broker import Kernel
from broker.kernel.image import AgentImage
from tests.broker.kernel.test_leasing import NEEDS, Parked, _until, script
from tests.broker.kernel.test_takeover_tampered_image_redteam import CAPS, _anchors
from tests.broker.store.conftest import raw


async def test_a_killed_process_set_runnable_is_ended_again_at_takeover(
        pg_database: str, tmp_path: Path) -> None:
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="a",
                           planners=lambda image, pid: Parked()) as a:
        for name in ("target", "worker"):  # each writes /<name>.txt when it runs
            await a.register_image(AgentImage(name, tools=("write_file",), needs=NEEDS,
                                              planner=script({"tool": "write_file", "args": {
                                                  "path": f"/{name}.txt", "data": "ok"}})))
        target, worker = (a.spawn(name, caps=CAPS) for name in ("target", "worker"))
        a.kill(target)
    with raw(pg_database) as db:
        db.execute("UPDATE processes SET state='runnable', reason=NULL WHERE pid=?", (target,))

    done = tmp_path / "fs" / "worker.txt"
    async with Kernel.open(pg_database, fs_root=tmp_path / "fs", broker="b") as b:
        # The neighbour is taken and runs; the revived one is ended again as it is taken.
        await _until(lambda: done.exists() and b.store.get_process(target)["state"] != "runnable")
        assert b.store.get_process(target)["state"] == "killed"
        assert "revived" in b.store.get_process(target)["reason"]
        assert len([p for p in _anchors(b) if p.startswith(f"process {target} was ended")]) == 1
        assert not (tmp_path / "fs" / "target.txt").exists()  # it never ran again
        assert target not in b.leasing.held
        assert (await b.wait(worker))["exit_code"] == 0
