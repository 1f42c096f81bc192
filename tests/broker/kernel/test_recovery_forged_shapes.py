"""Recovery reads rows a database writer without the key may have made anything: a process's
checkpoint (no record vouches for it) and records appended past the signed head (intact:
their hash is unkeyed). An edit there may change what its own process is shown, never stop the
open (invariant 15's last paragraph; invariant 6): each case below raised `TypeError`,
`AttributeError` or `ValueError` out of `Kernel.open`.

The broker stops dead as a planner's `receive` step (a builtin wrapping `proc.receive`) has
taken its message: the syscall's outcome is recorded, the step's own is not (as
`test_delivery.py`). Recovery then hands the step its one syscall's result
(`step_record.wrapped_outcome`), unless something below says otherwise."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker import Kernel
from broker.cli import main as cli_main
from broker.store import AuditRecord
from broker.store.vouch import TAKEN_BACK
from tests.broker.kernel.crashing import crash_after, crashing, outcome_of
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.conftest import open_image

NEEDS = ("proc:*:message",)
MESSAGE = "m1: transfer approved"


async def _crashed_mid_receive(db_path: Path) -> int:
    """The crash; the seq of the step's `tool.call` intent (its outcome unknown)."""
    undo = crash_after("append_audit", outcome_of("proc.receive"))

    async def start(kernel: Kernel) -> None:
        await open_image(kernel, "inbox", needs=NEEDS, tools=("receive",), planner={
            "kind": "scripted", "actions": [{"tool": "receive", "args": {}}, {"exit": 0}]})
        kernel.send_message(None, kernel.spawn("inbox"), MESSAGE)

    try:
        await crashing(db_path, start)
    finally:
        undo()
    with sqlite3.connect(db_path) as db:
        [(call,)] = db.execute("SELECT seq FROM audit WHERE pid=1 AND syscall='tool.call'"
                               " AND phase='intent'").fetchall()
    return int(call)


def _checkpoint_edited(db_path: Path, name: Any) -> None:
    """The writer makes the pending step's tool name `name` (a checkpoint is read back with a
    tool of any type: red team 29, a planner's step out of shape)."""
    with sqlite3.connect(db_path) as db:
        [(row, text)] = db.execute("SELECT id, state FROM checkpoint_log WHERE pid=1"
                                   " ORDER BY id DESC LIMIT 1").fetchall()
        state = json.loads(text)
        state["pending"]["tool"] = name
        db.execute("UPDATE checkpoint_log SET state=? WHERE id=?", (json.dumps(state), row))


def _no_message_lost(kernel: Kernel) -> None:
    """The message is the step's (handed over) or back in the mailbox: never gone."""
    history = kernel.process(1).history
    handed = [o for o in history if isinstance(o.result, dict)
              and o.result.get("body") == MESSAGE]
    assert len(handed) + kernel.store.mailbox_size(1) == 1


@pytest.mark.parametrize("name", [["receive"], {"receive": 1}], ids=["list", "map"])
async def test_a_pending_wrapper_step_edited_to_a_name_out_of_shape(db_path: Path,
                                                                    name: Any) -> None:
    """Red team 29's guard (`wrapped_outcome` looks a tool up only by a text name): the step's
    call was a builtin wrapper whose own outcome is unknown, and its name in the checkpoint is
    now a list: looked up as a key, `TypeError` out of the open."""
    await _crashed_mid_receive(db_path)
    _checkpoint_edited(db_path, name)
    async with Kernel.open(db_path) as kernel:
        status = await kernel.wait(1, timeout=10)
        # The step out of shape is not taken for `receive`: what it took goes back, and it
        # runs again, refused (nothing of it can run).
        assert status["state"] == "exited", status
        step = kernel.process(1).history[0]
        assert step.action.name == name and step.error["code"] == "INVALID_ARGUMENT"
        _no_message_lost(kernel)
        assert kernel.store.mailbox_size(1) == 1


FORGED = {
    # an exit a call of the step asked for, its code not a number (`step_record.asked_exit`)
    "an exit's code": lambda call, v: [
        ("intent", "proc.exit", call, {"args": {"code": v}}),
        ("outcome", "proc.exit", call, {"ok": True, "intent": "INTENT"})],
    "an exit's arguments": lambda call, v: [
        ("intent", "proc.exit", call, {"args": [v]}),
        ("outcome", "proc.exit", call, {"ok": True, "intent": "INTENT"})],
    # the step's own outcome, its error not text (`step_record.observed`: `in ERRORS`)
    "the step's error": lambda call, v: [
        ("outcome", "tool.call", None, {"ok": False, "intent": call, "error": v})],
}


@pytest.mark.parametrize("value", [[1], {"a": 1}, "x"], ids=["list", "map", "text"])
@pytest.mark.parametrize("what", FORGED)
async def test_a_forged_record_of_any_shape_in_a_pending_step(db_path: Path, what: str,
                                                              value: Any) -> None:
    call = await _crashed_mid_receive(db_path)
    seq = 0
    for phase, syscall, inv, detail in FORGED[what](call, value):
        if detail.get("intent") == "INTENT":
            detail = {**detail, "intent": seq}
        seq = append_past_head(db_path, AuditRecord(
            phase=phase, syscall=syscall, pid=1, inv=inv, tool=None if inv is None else
            "receive", resource="receive" if syscall == "tool.call" else None, detail=detail))
    async with Kernel.open(db_path) as kernel:
        status = await kernel.wait(1, timeout=10)
        assert status["state"] == "exited", status
        _no_message_lost(kernel)


REGISTERED = {"name": "t", "lang": "ts", "hash": "e" * 64}
OUTCOMES = {
    "its intent a list": {"ok": True, "intent": [1], "result": REGISTERED},
    "taking back a name that is a list": {"ok": False, TAKEN_BACK: True, "name": [1]},
}


@pytest.mark.parametrize("outcome", OUTCOMES)
async def test_a_forged_registration_outcome_of_any_shape_at_reload(
        db_path: Path, outcome: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A process with a stored tool is reloaded at the open, its tool table checked against
    the chain's registrations (`vouch.Registrations`): a `tool.register` outcome naming a
    list for its intent, or taking back a name that is a list, was taken as a key there."""
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, "job", planner={})
        pid = kernel.spawn("job", caps=["clock:*:read"])
        kernel.store.put_process_tool(pid, "t", {
            "lang": "ts", "hash": "e" * 64, "schema": {"type": "object"}, "description": "",
            "manifest": None, "manifest_hash": "-"})
    intent = append_past_head(db_path, AuditRecord(
        "intent", "tool.register", pid=pid, resource="ts",
        detail={"args": {"name": "t", "lang": "ts", "source": "…"}}))
    append_past_head(db_path, AuditRecord("outcome", "tool.register", pid=pid, resource="ts",
                                          detail={"intent": intent, **OUTCOMES[outcome]}))
    # `libos audit --verify` walks the same registrations: problems named, no traceback.
    assert cli_main(["audit", "--verify", "--json", "--db", str(db_path)]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any("newer than the signed anchor" in p for p in problems), problems
    async with Kernel.open(db_path) as kernel:
        proc = kernel.process(pid)
        assert proc.alive
        assert await kernel.call_tool(pid, "now", {}) > 0  # the neighbour: its image's tool
