"""Red team on the rows an open reads, by whoever writes the database but holds no key: each JSON
column of one live process's rows (its process row, checkpoints, steps, image, mail, approvals,
control requests, events) edited into text that is not JSON, JSON of another type, JSON nested
past Python's parser, or an object whose fields are not what was written. Many were parsed with
no guard: one such row raised JSONDecodeError, AttributeError or RecursionError out of
`Kernel.open` (every process down). Now each reader goes through one guard
(`broker.store.json_column.read_json`) that refuses it as `Unreadable` (a typed `Tampered`):
the open goes on, the damaged process is ended with one record saying why (as for an image the
chain refuses) or the damaged item alone is refused when read, and the neighbour still runs its
tool calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, Kernel
from broker.approvals.stored import public
from broker.errors import LibosError
from broker.store.audit import ANCHOR_RECORD
from broker.store.opening import open_store
from tests.conftest import open_image

EDITS = {"not-json": "not json {", "array": "[]", "number": "5", "string": '"x"',
         "deep": "[" * 100_000 + "]" * 100_000,
         "object": "{}", "fields": '{"cwd": "/", "usage": 5, "pending": {"exit": 0}}'}

# table.column -> the WHERE clause naming the damaged process's rows (its pid as `?`)
COLUMNS = {
    "processes.usage": "pid=?",
    "processes.result": "pid=?",
    "processes.labels": "pid=?",
    "checkpoint_log.state": "pid=?",
    "observations.action": "pid=?",
    "observations.result": "pid=?",
    "events.data": "pid=?",
    "mailbox.body": "to_pid=?",
    "approvals.args": "pid=?",
    "approvals.labels": "pid=?",
    "control.arg": "pid=?",
    "images.spec": "name=(SELECT image FROM processes WHERE pid=?)",
}

UNREADABLE = ("not-json", "deep")  # what no column takes; each refuses another type too
# What reads a damaged item that the open itself does not read (and the edits it refuses):
# refused typed, alone (any JSON value is a message's body or an event's data).
READERS: dict[str, tuple[Callable[[Kernel, int], Any], tuple[str, ...]]] = {
    "events.data": (lambda kernel, pid: kernel.store.events(pid=pid), UNREADABLE),
    "mailbox.body": (lambda kernel, pid: kernel.store.take_message(pid, 0), UNREADABLE),
    "approvals.args": (lambda kernel, pid: _requests_of(kernel, pid),
                       (*UNREADABLE, "array", "number", "string")),
    "approvals.labels": (lambda kernel, pid: _requests_of(kernel, pid),
                         (*UNREADABLE, "number", "string", "object", "fields")),
}


def _requests_of(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [public(r) for r in kernel.store.list_approvals(None) if r["pid"] == pid]


VICTIM = AgentImage("victim", tools=("read_file", "write_file"),
                    needs=("fs:/data/**:read", "fs:/out/**:write"), planner={
                        "kind": "scripted", "actions": [
                            {"tool": "read_file", "args": {"path": "/data/f"}},
                            {"tool": "write_file", "args": {"path": "/out/a", "data": "a"}},
                            {"exit": 0}]})
ASK_WRITE = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}


def _edit(store: Path | str, table: str, column: str, where: str, pid: int,
          text: str) -> int:
    s = open_store(store)
    try:
        with s.transaction() as db:
            return int(db.execute(f"UPDATE {table} SET {column}=? WHERE {where}",
                                  (text, pid)).rowcount)
    finally:
        s.close()


async def _made(store: Path | str, fs: Path) -> tuple[int, int]:
    """A victim waiting for a person mid-step (one step done, mail and a pause request
    waiting for it) and a neighbour driven by the host."""
    async with Kernel.open(store, fs_root=fs) as kernel:
        await open_image(kernel)
        await kernel.register_image(VICTIM)
        victim = kernel.spawn("victim", caps=["fs:/data/**:read", ASK_WRITE])
        neighbour = kernel.spawn("agent", caps=["fs:/data/**:read"])
        with trio.fail_after(30):
            while not kernel.approvals():
                await trio.sleep(0.01)
        kernel.send_message(None, victim, {"hello": 1})
        kernel.store.add_control("resume", victim, {"why": "test"})
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/f"}) == "f"
    return victim, neighbour


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("column", list(COLUMNS))
async def test_one_unreadable_row_does_not_stop_an_open(
        store_at: Path | str, tmp_path: Path, column: str, edit: str) -> None:
    fs = tmp_path / "fs"
    (fs / "data").mkdir(parents=True)
    (fs / "out").mkdir()
    (fs / "data" / "f").write_text("f")
    victim, neighbour = await _made(store_at, fs)
    table, name = column.split(".")
    assert _edit(store_at, table, name, COLUMNS[column], victim, EDITS[edit]) >= 1
    with trio.fail_after(120):  # (never a hang: a bound far past any open's time)
        async with Kernel.open(store_at, fs_root=fs) as kernel:
            assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/f"}) == "f"
            if victim not in kernel.store.live_pids():  # ended, and on the record once
                noted = [r for r in kernel.audit() if r["syscall"] == ANCHOR_RECORD
                         and f"process {victim} " in r["detail"].get("problem", "")]
                assert len(noted) == 1, noted
            elif column in READERS and edit in READERS[column][1]:
                with pytest.raises(LibosError):
                    READERS[column][0](kernel, victim)
            kernel.approvals()  # (the others' requests are still listed)
            if table == "images":  # (the chain vouches for an image's spec: --verify names it)
                assert any(f"image {VICTIM.name}:" in problem and "edited" in problem
                           for problem in kernel.verify_audit()[1])
