"""A step's action is encoded once for its two checkpoints: the observation the checkpoint
after it stores holds the text the checkpoint before wrote as its pending action, byte for
byte what the store writes for that action (ASCII; an action whose text is not, or a step
whose checkpoint went the whole way, is encoded as before). Real SQLite, a real scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import broker.store.durable as durable
from broker import CallTool, Kernel, ScriptedPlanner
from broker.kernel.recovery import action_to_json
from tests.conftest import open_image


async def _run(kernel: Kernel, actions: list[CallTool]) -> int:
    await open_image(kernel, "echoing", needs=("clock:*:read",), tools=("now",))
    pid = kernel.spawn("echoing", caps=["clock:*:read"], planner=ScriptedPlanner(actions))
    await kernel.wait(pid)
    return pid


def _stored_actions(kernel: Kernel, pid: int) -> list[str]:
    kernel.store.commit_deferred()
    return [r["action"] for r in kernel.store._query(
        "SELECT action FROM observations WHERE pid=? ORDER BY step", (pid,))]


async def test_each_action_is_encoded_once(db_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    encoded: list[Any] = []
    storable = durable._storable_json

    def counted(value: Any) -> str:
        encoded.append(value)
        return storable(value)

    monkeypatch.setattr(durable, "_storable_json", counted)
    actions = [CallTool("now", {}),
               CallTool("now", {"text": "a"}),
               CallTool("now", {"text": "é"})]  # (not ASCII: encoded by the store)
    async with Kernel.open(db_path) as kernel:
        pid = await _run(kernel, actions)
        stored = _stored_actions(kernel, pid)
    assert stored == [storable(action_to_json(a)) for a in actions]
    again = [v for v in encoded if v in [action_to_json(a) for a in actions]]
    assert again == [action_to_json(actions[2])]  # the ASCII ones: written from the text
