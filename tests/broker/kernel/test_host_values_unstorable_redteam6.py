"""Red team 6: a value the host hands the broker to store that passes the depth bound
(`too_deep.refuse_stored`) but that JSON cannot keep as it is. Before: a message or an
event's data with a lone surrogate raised an untyped UnicodeEncodeError out of
`Kernel.send_message` / `raise_event` (a tuple key an untyped TypeError), an object's value
with keys of two types an untyped TypeError out of `put_object`; the host's `exit` stored
a set or an object as its repr and `{1: "a", "1": "b"}` as `{"1": "b"}`, while `wait`
answered the value itself, so what the broker answered differed from what it kept.
Severity: low-medium (an embedder's host function hands such a value on: the broker raises
an untyped error, invariant 18, or keeps another value than it acted on). Now each is
`InvalidArgument` before anything is written, the host's acts refused on the record."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, InvalidArgument, Kernel
from broker.planner import Exit, ScriptedPlanner


class Opaque:
    """What an embedder's host function may hand on: no JSON type."""


UNSTORABLE: dict[str, Any] = {
    "lone surrogate": "\ud800",
    "tuple key": {(1, 2): 3},
    "keys colliding after JSON": {1: "a", "1": "b"},
    "keys of two types": {1: "a", "b": 2},
    "set": {1, 2},
    "object": Opaque(),
    "bytes": b"\xff",
}


@pytest.mark.parametrize("name", list(UNSTORABLE))
async def test_an_unstorable_host_value_is_refused_typed_before_anything_is_written(
        db_path: Path, name: str) -> None:
    value = UNSTORABLE[name]
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        pid = kernel.spawn("a")
        with pytest.raises(InvalidArgument, match="not plain JSON"):
            kernel.send_message(None, pid, {"v": value})
        with pytest.raises(InvalidArgument, match="not plain JSON"):
            kernel.raise_event("e", [value])
        with pytest.raises(InvalidArgument):
            kernel.put_object("x", {"v": value}, ns="s")
        assert kernel.audit()[-1]["syscall"] == "host.obj.put"
        assert kernel.audit()[-1]["phase"] == "rejected"
        with pytest.raises(InvalidArgument, match="not plain JSON"):
            kernel.exit(pid, 0, {"v": value})
        last = kernel.audit()[-1]
        assert (last["syscall"], last["phase"]) == ("host.exit", "rejected")
        # The neighbours: plain values are kept as they are, and the process is still the
        # host's to end.
        assert kernel.send_message(None, pid, {"v": "\u00e9"}) > 0
        assert kernel.raise_event("e", [1.5, None, True]) > 0
        assert kernel.put_object("x", {"v": 2**70}, ns="s")["version"] == 1
        kernel.exit(pid, 0, {"done": [1, "2"]})
        assert (await kernel.wait(pid))["result"] == {"done": [1, "2"]}
        assert kernel.verify_audit()[1] == []
    async with Kernel.open(db_path) as kernel:  # what was kept is what was answered
        assert (await kernel.wait(pid))["result"] == {"done": [1, "2"]}
        assert kernel.get_object("x", ns="s")["value"] == {"v": 2**70}


@pytest.mark.parametrize("name", list(UNSTORABLE))
async def test_an_image_holding_an_unstorable_value_is_refused_typed(
        kernel: Kernel, name: str) -> None:
    """The host's image (a scripted planner's exit result in it) raised an untyped
    UnicodeEncodeError or TypeError out of `register_image` (a set, or a lone surrogate)."""
    image = {"name": "a", "tools": ["now"], "needs": ["clock:*:read"], "planner": {
        "kind": "scripted", "actions": [{"exit": 0, "result": {"v": UNSTORABLE[name]}}]}}
    with pytest.raises(InvalidArgument, match="not plain JSON"):
        await kernel.register_image(image)
    last = kernel.audit()[-1]
    assert (last["syscall"], last["phase"]) == ("host.image", "rejected")
    image["planner"]["actions"][0]["result"] = {"v": [1.5, "\u00e9"]}  # the neighbour
    await kernel.register_image(image)
    assert (await kernel.wait(kernel.spawn("a")))["result"] == {"v": [1.5, "\u00e9"]}
    assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("name", [n for n in UNSTORABLE if n != "lone surrogate"])
async def test_a_planners_exit_json_cannot_keep_ends_it_typed(
        db_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    """A scripted planner's `Exit` (the embedder's): a tuple key raised an untyped TypeError,
    logged as the planner's failure; a set or `{1: "a", "1": "b"}` was answered by `wait`
    as it is and kept as its repr or `{"1": "b"}`. (A lone surrogate is shown U+FFFD.)"""
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        pid = kernel.spawn("a", planner=ScriptedPlanner([Exit(0, {"v": UNSTORABLE[name]})]))
        fits = kernel.spawn("a", planner=ScriptedPlanner([Exit(0, {"v": [1, "2"]})]))
        with caplog.at_level(logging.ERROR):
            ended = await kernel.wait(pid)
        assert ended["exit_code"] == 1 and ended["result"]["error"] == "INVALID_ARGUMENT"
        assert "not plain JSON" in ended["result"]["message"]
        assert not [r for r in caplog.records if "planner of process" in r.getMessage()]
        assert (await kernel.wait(fits))["result"] == {"v": [1, "2"]}  # the neighbour
    async with Kernel.open(db_path) as kernel:
        assert (await kernel.wait(pid))["result"] == ended["result"]
        assert kernel.verify_audit()[1] == []
