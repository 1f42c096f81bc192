"""ChatPlanner without HTTP: a fake backend, observations fed by hand."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from broker.planner import CallTool, Exit, Observation
from broker.planner.chat import ELIDED, MIN_TURN_CHARS, ChatPlanner, Reply, ToolCallRequest
from broker.store import SQLiteStore

TOOLS = [{"name": "read_file", "description": "Read.", "schema": {"type": "object"}}]


class FakeBackend:
    def __init__(self, replies: list[Reply]) -> None:
        self.replies = replies
        self.seen: list[tuple[str, list[dict[str, Any]]]] = []

    async def complete(self, system: str, turns: list[dict[str, Any]],
                       tools: list[dict[str, Any]]) -> Reply:
        self.seen.append((system, copy.deepcopy(turns)))
        return self.replies.pop(0)


def read(n: int) -> Reply:
    return Reply("", [ToolCallRequest(f"c{n}", "read_file", {"path": f"/f{n}"})])


async def test_old_tool_results_are_elided_past_the_bound() -> None:
    backend = FakeBackend([read(n) for n in range(20)] + [Reply("done")])
    planner = ChatPlanner(backend, lambda: TOOLS, goal="read", max_context=3000)
    history: list[Observation] = []
    while True:
        action = await planner.next_action(history)
        if isinstance(action, Exit):
            break
        assert isinstance(action, CallTool)
        history.append(Observation(len(history), action, result="x" * 1000))
    assert action == Exit(0, "done")
    turns = backend.seen[-1][1]
    kept = [t for t in turns if t["role"] == "tool" and t["content"] != ELIDED]
    assert 3 <= len(kept) <= 4 and turns[-1]["content"] != ELIDED
    assert turns[0] == {"role": "user", "text": "read"}
    assert len(json.dumps(planner.snapshot())) < 10_000


async def test_the_tool_guide_is_given_when_register_tool_is_offered() -> None:
    backend = FakeBackend([Reply("a"), Reply("b")])
    await ChatPlanner(backend, lambda: TOOLS, goal="g").next_action([])
    with_register = [*TOOLS, {"name": "register_tool", "description": "", "schema": {}}]
    await ChatPlanner(backend, lambda: with_register, goal="g").next_action([])
    assert "register_tool {name" not in backend.seen[0][0]
    assert "register_tool {name" in backend.seen[1][0]
    assert "export default async function run(args, libos)" in backend.seen[1][0]


async def test_snapshot_and_restore_carry_the_queue_and_the_awaited_call() -> None:
    two = Reply("", [ToolCallRequest("a", "read_file", {"path": "/a"}),
                     ToolCallRequest("b", "read_file", "{not json")])
    backend = FakeBackend([two, Reply("end")])
    planner = ChatPlanner(backend, lambda: TOOLS, goal="g")
    first = await planner.next_action([])
    assert first == CallTool("read_file", {"path": "/a"})
    snapshot, rows = planner.snapshot(), planner.journal()
    assert snapshot["turns"] == 2 and sorted(rows) == [0, 1]  # the turns go apart, as rows
    assert planner.journal() == {}  # each is written once
    state = json.loads(json.dumps({**snapshot, "turns": [rows[0], rows[1]]}))
    resumed = ChatPlanner(backend, lambda: TOOLS, goal="ignored")
    resumed.restore(state)
    history = [Observation(0, first, error={"code": "NOT_CAPABLE", "message": "no"})]
    assert await resumed.next_action(history) == Exit(0, "end")
    tool_turns = [t for t in backend.seen[-1][1] if t["role"] == "tool"]
    assert [(t["id"], json.loads(t["content"])["error"]) for t in tool_turns] == [
        ("a", "NOT_CAPABLE"), ("b", "INVALID_ARGUMENT")]
    assert backend.seen[-1][1][0] == {"role": "user", "text": "g"}


async def test_a_long_conversation_drops_old_exchanges_and_its_rows_follow(
        tmp_path: Path) -> None:
    """Past max_context, old exchanges are elided and then dropped whole: the number of
    turns stays bounded; the rows a store keeps (written from `journal()`, one per turn)
    always rebuild exactly the conversation in memory."""
    store = SQLiteStore(tmp_path / "s.db")
    store.insert_process(parent=None, image="x", version="1", state="running", root="/",
                         cwd="/")
    steps = 120
    backend = FakeBackend([read(n) for n in range(steps)] + [Reply("done")])
    planner = ChatPlanner(backend, lambda: TOOLS, goal="read", max_context=8000)
    history: list[Observation] = []
    lengths = []
    for _ in range(steps):
        action = await planner.next_action(history)
        assert isinstance(action, CallTool)
        history.append(Observation(len(history), action, result="y" * 600))
        store.save_checkpoint(1, len(history), {"planner": planner.snapshot()},
                              turns=planner.journal())
        lengths.append(len(planner.turns))
        rebuilt = ChatPlanner(backend, lambda: TOOLS, goal="?")
        state = store.checkpoint(1)["state"]["planner"]
        rebuilt.restore({**state, "turns": store.planner_turns(1, state["turns"],
                                                               state["first"])})
        assert rebuilt.turns == planner.turns
    assert max(lengths[40:]) == max(lengths[-20:]) <= 8000 // MIN_TURN_CHARS + 2
    assert planner.first > 100  # exchanges were dropped, from the oldest
    assert planner.turns[0] == {"role": "user", "text": "read"}
    assert planner.turns[1]["role"] == "assistant"  # whole exchanges go: results keep calls
    rows = store._query("SELECT COUNT(*) AS n FROM planner_turns")[0]["n"]
    assert rows == len(planner.turns)  # dropped turns' rows are deleted
    assert await planner.next_action(history) == Exit(0, "done")
