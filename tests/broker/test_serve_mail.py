"""Messages and events given on one broker reach a process another broker runs, promptly:
broker a (a real `libos serve` process) runs a process that waits in `receive`, then in
`wait_event`; broker b's embedding API sends it a message and raises the event. The store
tells a (LISTEN/NOTIFY), so each wait wakes within a moment, not at its timeout; and with
notices lost, a's waits still look again every `SHARED_POLL`."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import trio

from broker import Kernel
from broker.kernel.image import AgentImage
from tests.broker.test_serve import Parked, broker, finish, query, until

TIMEOUT = 120  # each wait's own: far past what the test allows it to take
LISTENER = AgentImage("listener", tools=("receive", "wait_event"), needs=("proc:*:message",),
                      planner={"kind": "scripted", "actions": [
                          {"tool": "receive", "args": {"timeout": TIMEOUT}},
                          {"tool": "wait_event", "args": {"name": "go", "timeout": TIMEOUT}}]})


def outcomes(dsn: str, pid: int, syscall: str) -> list[dict]:
    rows = query(dsn, "SELECT detail FROM audit WHERE pid=? AND syscall=? AND phase='outcome'"
                 " ORDER BY seq", (pid, syscall))
    return [json.loads(detail) for (detail,) in rows]


async def test_a_message_and_an_event_from_another_broker_wake_the_waits(
        pg_database: str, tmp_path: Path) -> None:
    async with Kernel.open(pg_database, broker="seed", planners=lambda image, pid: Parked(),
                           fs_root=tmp_path / "seed") as seed:
        await seed.register_image(LISTENER)
        listener = seed.spawn("listener", caps=["proc:*:message"])
    a = broker(pg_database, "a", "--lease", "60", "--until-idle")
    try:
        await until(lambda: query(pg_database, "SELECT 1 FROM audit WHERE pid=? AND"
                                  " syscall='proc.receive' AND phase='intent'", (listener,)),
                    30, "a's process to wait in receive")
        async with Kernel.open(pg_database, broker="b", fs_root=tmp_path / "b") as b:
            started = time.monotonic()
            b.send_message(None, listener, {"hello": "from b"})
            await until(lambda: outcomes(pg_database, listener, "proc.receive"), 10,
                        "the receive on a to wake")
            await until(lambda: query(pg_database, "SELECT 1 FROM audit WHERE pid=? AND"
                                      " syscall='proc.wait_event' AND phase='intent'",
                                      (listener,)), 10, "the event wait on a")
            b.raise_event("go", {"n": 1})
            with trio.fail_after(15):
                done = await b.wait(listener)
            took = time.monotonic() - started
        outcome = finish(a, 60)
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGKILL)
            a.wait(10)
    assert done["state"] == "exited" and listener in outcome["finished"]
    # Both waits ended by what b gave, long before their own timeouts.
    assert took < 20 < TIMEOUT
    [received] = outcomes(pg_database, listener, "proc.receive")
    [seen] = outcomes(pg_database, listener, "proc.wait_event")
    assert received["ok"] and seen["ok"]
    assert query(pg_database, "SELECT taken IS NOT NULL FROM mailbox WHERE to_pid=?",
                 (listener,)) == [(True,)]
