"""A store that fails the `exec` event after `proc.exec` switched the image (durably): the
switch happened, so the call is not a `Conflict` ("nothing of it was done", which invites the
caller to exec again): it is answered and recorded done, and the event, kept for the flush,
is stored once the store heals. Real SQLite, a trigger that fails."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from broker import Kernel
from tests.broker.kernel.test_exec import setup


async def test_an_exec_whose_event_the_store_refuses_is_an_exec_done(
        kernel: Kernel, db_path: Path) -> None:
    pid = await setup(kernel)
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("CREATE TABLE fault(failing INTEGER NOT NULL)")
    other.execute("INSERT INTO fault VALUES (1)")
    other.execute("CREATE TRIGGER fail_events BEFORE INSERT ON events WHEN (SELECT failing"
                  " FROM fault) BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    try:
        done = await kernel.call_tool(pid, "exec", {"image": "narrow"})
        assert (done["from"], done["to"]) == ("wide:1", "narrow:1")
        assert kernel.store.get_process(pid)["image"] == "narrow"
        [outcome] = [r for r in kernel.audit(pid) if r["syscall"] == "proc.exec"
                     and r["phase"] in ("outcome", "intent+outcome")]
        assert outcome["detail"]["ok"] is True
        other.execute("UPDATE fault SET failing=0")
        kernel.events.flush()  # (the periodic flush's work, now)
    finally:
        other.close()
    assert [e for e in kernel.store.events(pid=pid) if e["kind"] == "exec"]
    # The neighbour: the new image's tool works.
    assert await kernel.call_tool(pid, "read_file", {"path": "/data/public/f.txt"}) == "public"
    assert kernel.verify_audit()[1] == []
