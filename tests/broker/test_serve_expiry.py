"""Approvals expire on any broker: a request whose deadline passes while the broker that runs
its call is dead or frozen is expired by another broker, exactly once (two brokers sweep at
once), with its audit record; a frozen broker, woken, learns it at once, and its call fails
with `APPROVAL_DENIED`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import trio

from broker import Kernel
from broker.kernel.image import AgentImage
from tests.broker.test_serve import (
    Parked,
    broker,
    finish,
    freeze_between_transactions,
    query,
    until,
)

ASKER = AgentImage("asker", tools=("write_file",), needs=("fs:/**:read,write",),
                   planner={"kind": "scripted", "actions": [
                       {"tool": "write_file", "args": {"path": "/out/r.txt", "data": "r"}}]})


async def seed_asker(dsn: str, tmp_path: Path, seconds: float) -> tuple[int, float]:
    """One process whose first call asks a person, under a capability that expires (and so
    its request's deadline) `seconds` from now."""
    deadline = time.time() + seconds
    async with Kernel.open(dsn, broker="seed", planners=lambda image, pid: Parked(),
                           fs_root=tmp_path / "seed-fs") as kernel:
        await kernel.register_image(ASKER)
        pid = kernel.spawn("asker", caps=[{"kind": "fs", "scope": "/out/**", "effect": "ask",
                                           "rights": ["write"], "expires": deadline}])
    return pid, deadline


def request_of(dsn: str, pid: int) -> list[tuple[str, str]]:
    return query(dsn, "SELECT id, state FROM approvals WHERE pid=?", (pid,))


async def owner_asking(dsn: str, tmp_path: Path, *extra: str
                       ) -> tuple[int, float, subprocess.Popen[str], str]:
    """A seeded asker (its pid, its request's deadline) and the broker running it (the OS
    process, its name), once that broker has filed the request.

    The request's deadline is its capability's, fixed at seeding; a broker that starts after
    it (a loaded machine) finds the capability expired and never asks. Then the asker ends,
    that broker is stopped and both are made again with twice the time (a precondition made
    true, not a wall-time bound)."""
    for attempt, seconds in enumerate((8, 16, 32, 64)):
        pid, deadline = await seed_asker(dsn, tmp_path, seconds)
        name = f"owner{attempt or ''}"
        owner = broker(dsn, name, *extra)
        try:
            await until(lambda: request_of(dsn, pid) or time.time() > deadline + 1,  # noqa: B023
                        seconds + 31, "the owner to ask")
            if request_of(dsn, pid):
                return pid, deadline, owner, name
            await until(lambda: pid not in live(dsn), 120, "the late asker to end")  # noqa: B023
        finally:
            if not request_of(dsn, pid) and owner.poll() is None:
                owner.send_signal(signal.SIGTERM)
                owner.communicate(timeout=60)
    raise AssertionError("the owner never asked before its request's deadline")


def live(dsn: str) -> set[int]:
    return {r[0] for r in query(dsn, "SELECT pid FROM processes WHERE state NOT IN"
                                " ('exited', 'killed')")}


def expiry_records(dsn: str, request: str) -> list[Any]:
    return query(dsn, "SELECT seq FROM audit WHERE phase='denied' AND detail::json->>'request'=?"
                 " AND detail::json->>'state'='expired'", (request,))


async def test_a_dead_brokers_request_expires_on_the_others_once(pg_database: str,
                                                                  tmp_path: Path) -> None:
    pid, deadline, owner, _ = await owner_asking(pg_database, tmp_path, "--lease", "60")
    owner.send_signal(signal.SIGKILL)  # its lease outlives the test
    owner.wait(10)
    [(request, state)] = request_of(pg_database, pid)
    assert state == "pending"
    # Two other brokers run; neither holds the process (its lease is the dead owner's).
    async with Kernel.open(pg_database, broker="b", fs_root=tmp_path / "b") as b, \
            Kernel.open(pg_database, broker="c", fs_root=tmp_path / "c") as c:
        await until(lambda: request_of(pg_database, pid)[0][1] != "pending",
                    deadline - time.time() + 10, "the request to expire")
        expired_at = time.time()
        assert request_of(pg_database, pid) == [(request, "expired")]
        assert expired_at - deadline < 5  # by the idle sweep (every 3 s), not by a takeover
        assert not b.leasing.mine(pid) and not c.leasing.mine(pid)
        await trio.sleep(1)  # both swept again meanwhile
        assert len(expiry_records(pg_database, request)) == 1
        _, problems = b.store.audit_problems()
        assert problems == []


async def test_a_frozen_brokers_call_learns_its_request_expired_elsewhere(
        pg_database: str, tmp_path: Path) -> None:
    pid, deadline, owner, name = await owner_asking(pg_database, tmp_path, "--lease", "60",
                                                    "--until-idle")
    try:
        [(request, _)] = request_of(pg_database, pid)
        freeze_between_transactions(pg_database, owner, name)
        async with Kernel.open(pg_database, broker="b", fs_root=tmp_path / "b"):
            await until(lambda: request_of(pg_database, pid)[0][1] == "expired",
                        deadline - time.time() + 10, "another broker to expire it")
            assert len(expiry_records(pg_database, request)) == 1  # while the owner sleeps
            woken = time.monotonic()
            owner.send_signal(signal.SIGCONT)
            await until(lambda: query(pg_database, "SELECT error FROM observations WHERE"
                                      " pid=?", (pid,)), 10, "the woken call to fail")
            learned = time.monotonic() - woken
        outcome = finish(owner, 60)
    finally:
        if owner.poll() is None:
            owner.send_signal(signal.SIGCONT)
            owner.kill()
            owner.wait(10)
    assert learned < 2  # told, or its poll: never a wait for anything else
    [(error,)] = query(pg_database, "SELECT error FROM observations WHERE pid=?", (pid,))
    assert json.loads(error)["code"] == "APPROVAL_DENIED"
    assert outcome["finished"] == [pid]
    assert len(expiry_records(pg_database, request)) == 1
