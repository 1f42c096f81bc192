"""An audit record's size does not grow with what a tool sends: its summary of arguments and
results holds at most MAX_SUMMARY_CHARS of text, and its message 256 characters."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, InvalidArgument, Kernel
from broker.kernel import summary
from broker.kernel.summary import MAX_SUMMARY_CHARS, summarize

# 8 MiB of nested strings, each just past the cut: 32 x 32 x 32 of them, every level full.
NESTED = [[["s" * 257] * 32] * 32] * 32
BOUND = 2 * MAX_SUMMARY_CHARS  # a record's detail, as stored JSON (text, keys and quoting)


def test_a_summary_holds_a_bounded_amount_of_text() -> None:
    assert len(json.dumps(summarize({"value": NESTED}))) < BOUND
    assert len(json.dumps(summarize({"k" * 10_000: 1, "v": "x" * 10_000}))) < 1024
    # what fits is kept as it was
    small = {"path": "/data/a.txt", "n": [1, 2.5, None, True], "deep": {"a": {"b": "c"}}}
    assert summarize(small) == small
    # a top-level name stays, whatever comes before it (`tool.register`'s is read back)
    late = summarize({"schema": NESTED, "source": "s" * 10_000, "name": "t", "lang": "ts"})
    assert late["name"] == "t" and late["lang"] == "ts" and len(json.dumps(late)) < BOUND


async def test_a_big_refused_value_writes_a_small_record(kernel: Kernel, db_path: Path) -> None:
    await kernel.register_image(AgentImage(
        "writer", tools=("put_object", "get_object"), needs=("obj:*:read,write",),
        types={"word": {"type": "string"}}))
    pid = kernel.spawn("writer", caps=["obj:*:read,write"])
    key = "k" * 100_000
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "put_object", {"name": "o", "type": "word", "value": NESTED})
    with pytest.raises(InvalidArgument):  # the message names the key
        await kernel.call_tool(pid, "put_object", {"name": "o", "type": "word",
                                                   "value": {key: 1}})
    records = [r for r in kernel.audit(pid) if r["syscall"] in ("tool.call", "obj.put")]
    assert {(r["syscall"], r["phase"]) for r in records} == {
        ("tool.call", "intent"), ("tool.call", "outcome"), ("obj.put", "intent"),
        ("obj.put", "outcome")}
    assert all(r["detail"]["error"] == "INVALID_ARGUMENT" for r in records
               if r["phase"] == "outcome")
    sizes = sqlite3.connect(db_path).execute(
        "SELECT max(length(detail)) FROM audit WHERE pid=?", (pid,)).fetchone()
    assert sizes[0] < BOUND
    # the neighbour: an ordinary value is stored and read back whole, its record as before
    await kernel.call_tool(pid, "put_object", {"name": "o", "type": "word", "value": "hello"})
    assert (await kernel.call_tool(pid, "get_object", {"name": "o"}))["value"] == "hello"
    [put] = [r for r in kernel.audit(pid) if r["syscall"] == "obj.put"
             and r["phase"] == "intent"][-1:]
    assert put["detail"]["args"] == {"name": "o", "type": "word", "value": "hello"}


def _maps() -> list[dict[str, Any]]:
    """Maps whose summaries take each way through `_flat` and around it."""
    wide = {f"k{i}": "v" * 256 for i in range(32)}  # past the budget within the map
    return [
        {"name": "noop", "args": {"n": 0}},
        {"name": "t", "args": {}},
        {"args": {"a": None, "b": True, "c": 2.5, "d": "x" * 256}},
        {"args": {"a": "x" * 257}},  # a string cut: not flat
        {"args": {"k" * 257: 1}},  # a key cut
        {"args": {1: "one"}},  # a key that is not text
        {"args": {"a": [1, 2]}},  # a container inside
        {"args": {f"k{i}": i for i in range(33)}},  # more items than a level keeps
        {"args": wide},
        {"args": {"a": "x" * 200}, "more": wide, "last": {"z": 1}},  # budget shared after it
        {"first": wide, "args": {"a": 1}},  # the budget spent before it
        {"args": {"a": _Text("subclass")}},
        {"args": {"a": b"bytes"}},
        {f"k{i}": {"a": i} for i in range(40)},  # a top-level map past what a level keeps
        _Map(name="t", args={"n": 0}),  # a map of another type (walked as one)
        {"first": [1, 2], "args": {"a": 1}, "last": {"b": "c"}},  # a _Summary made first
        # Its keys' characters spent too: what follows it is cut where the walk cuts it.
        {"args": {f"{i:03d}" + "k" * 104: "v" * 150 for i in range(31)},
         "last": {"z": "y" * 250, "w": "y" * 250}},
    ]


class _Map(dict):  # type: ignore[type-arg]
    pass


class _Text(str):
    pass


@pytest.mark.parametrize("value", _maps())
def test_a_flat_map_is_summarized_as_the_walk_summarizes_it(
        value: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """`_flat` (a warm tool call's arguments, copied without a call per item) gives exactly
    what the walk gives, and leaves the same budget to what follows."""
    fast = summarize(value)
    monkeypatch.setattr(summary, "_flat", lambda value, left: None)
    walked = summarize(value)
    assert json.dumps(fast) == json.dumps(walked)  # the same items, in the same order
