"""The embedding API on a process another broker runs: broker a (a real `libos serve`
process) runs it; broker b's embedding API pauses, resumes and kills it, approves its
request and waits for it, all through the store as the CLI does (a runs and audits each), and
reads it from the store. A tool call stays a typed `Conflict` naming the broker that runs it
(its sandbox is there), and writes nothing."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Conflict, Kernel
from broker.kernel.image import AgentImage
from tests.broker.test_serve import Parked, broker, finish, query, until

NAP = {"tool": "sleep", "args": {"seconds": 0.2}}
NAPPER = AgentImage("napper", tools=("sleep",), needs=("clock:*:sleep",),
                    planner={"kind": "scripted", "actions": [NAP] * 200})
ASKER = AgentImage("asker", tools=("write_file",), needs=("fs:/**:read,write",),
                   planner={"kind": "scripted", "actions": [
                       {"tool": "write_file", "args": {"path": "/r.txt", "data": "r"}}]})


def state(dsn: str, pid: int) -> str:
    return query(dsn, "SELECT state FROM processes WHERE pid=?", (pid,))[0][0]


def signals(dsn: str, pid: int) -> list[tuple[str, Any, Any]]:
    return query(dsn, "SELECT phase, detail::json->>'signal', detail::json->>'who' FROM audit"
                 " WHERE pid=? AND syscall='proc.signal' ORDER BY seq", (pid,))


async def test_another_brokers_process_through_the_embedding_api(pg_database: str,
                                                                 tmp_path: Path) -> None:
    async with Kernel.open(pg_database, broker="seed", planners=lambda image, pid: Parked(),
                           fs_root=tmp_path / "seed") as seed:
        await seed.register_image(NAPPER)
        await seed.register_image(ASKER)
        napper = seed.spawn("napper", caps=["clock:*:sleep"])
        asker = seed.spawn("asker", caps=[{"kind": "fs", "scope": "/**", "effect": "ask",
                                           "rights": ["write"]}])
    a = broker(pg_database, "a", "--lease", "60", "--until-idle")
    try:
        await until(lambda: len(query(pg_database, "SELECT pid FROM leases WHERE holder='a'"
                                      " AND expires > 0")) == 2, 30, "a to take both")
        await until(lambda: query(pg_database, "SELECT 1 FROM approvals WHERE pid=?",
                                  (asker,)), 30, "a's call to ask")
        async with Kernel.open(pg_database, broker="b", fs_root=tmp_path / "b") as b:
            # Reads, from the store: b never takes the process.
            info = b.process_info(napper)
            assert info["broker"] == "a" and info["image"] == "napper"
            assert info["state"] in ("running", "waiting")
            caps = b.capabilities(napper)
            assert ("clock", "*", ["sleep"]) in [(c["kind"], c["scope"], c["rights"])
                                                 for c in caps]
            assert len({c["handle"] for c in caps}) == len(caps)
            assert b.checkpoints(napper)
            # Controls, forwarded: a applies and audits each, under the name b gave.
            b.pause(napper, who="host-b")
            await until(lambda: state(pg_database, napper) == "paused", 10, "the pause")
            steps = len(b.store.observations(napper))
            await trio.sleep(0.6)
            assert len(b.store.observations(napper)) == steps  # held at its step boundary
            # A tool call cannot be forwarded (the sandbox is a's): typed, nothing written
            # (asked while a's process is paused: running, it appends its own records).
            before = b.store.last_seq()
            with pytest.raises(Conflict, match="run by broker 'a'"):
                await b.call_tool(napper, "sleep", {"seconds": 0})
            assert b.store.last_seq() == before
            b.resume(napper, who="host-b")
            await until(lambda: len(b.store.observations(napper)) > steps, 10, "the resume")
            # An approval given on b resumes a's call; b waits for its end from the store.
            [request] = b.approvals()
            b.approve(request["id"], who="host-b")
            with trio.fail_after(15):
                done = await b.wait(asker)
            assert done["state"] == "exited" and done["exit_code"] == 0
            b.kill(napper, "enough", who="host-b")
            with trio.fail_after(15):
                killed = await b.wait(napper)
            assert killed["state"] == "killed" and killed["reason"] == "enough"
            assert b.loaded(napper) is None and not b.leasing.mine(napper)
            # a signs its newest records within a moment (SIGN_INTERVAL), not at once: a
            # problem that stays (an edit, a cut) fails here.
            await until(lambda: b.store.audit_problems()[1] == [], 10, "a verified chain")
        outcome = finish(a, 60)
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGKILL)
            a.wait(10)
    assert sorted(outcome["finished"]) == sorted([napper, asker])
    assert signals(pg_database, napper) == [("admin", "pause", "host-b"),
                                            ("admin", "resume", "host-b"),
                                            ("admin", "kill", "host-b")]
