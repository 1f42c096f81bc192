"""An exit result and the host's values (objects, messages, events) are bounded like
everything the broker stores (`json_text.MAX_STORED_DEPTH`): a planner's `Exit` nested past
it ends its process with the typed `InvalidArgument` (as an exit code the store cannot keep
does), never an untyped `RecursionError` logged as the planner's failure (~990 deep), nor a
result stored that a parent's `proc.wait` and a deeper stack cannot take (~600 deep); the
host's `exit` refuses it on the record."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from broker import AgentImage, InvalidArgument, Kernel
from broker.json_text import MAX_STORED_DEPTH
from broker.planner import Exit, ScriptedPlanner


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [MAX_STORED_DEPTH + 1, 990, 5_000])
async def test_a_planners_exit_nested_too_deep_ends_it_typed(
        kernel: Kernel, depth: int, caplog: pytest.LogCaptureFixture) -> None:
    await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
    deep = kernel.spawn("a", planner=ScriptedPlanner([Exit(0, nested(depth))]))
    shallow = kernel.spawn("a", planner=ScriptedPlanner([Exit(0, nested(MAX_STORED_DEPTH))]))
    with caplog.at_level(logging.ERROR):
        ended = await kernel.wait(deep)
    assert ended["exit_code"] == 1
    assert ended["result"]["error"] == "INVALID_ARGUMENT"
    assert "nested too deep" in ended["result"]["message"]
    assert not [r for r in caplog.records if "planner of process" in r.getMessage()]
    assert (await kernel.wait(shallow))["result"] == nested(MAX_STORED_DEPTH)  # the neighbour
    assert kernel.verify_audit()[1] == []


async def test_the_hosts_exit_nested_too_deep_is_refused_on_the_record(kernel: Kernel) -> None:
    await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
    pid = kernel.spawn("a")
    for depth in (MAX_STORED_DEPTH + 1, 5_000):
        with pytest.raises(InvalidArgument, match="nested too deep"):
            kernel.exit(pid, 0, nested(depth))
        last = kernel.audit()[-1]
        assert (last["syscall"], last["phase"]) == ("host.exit", "rejected")
        assert last["detail"]["error"] == "INVALID_ARGUMENT"
    assert kernel.exit(pid, 0, {"done": True})["state"] == "exited"  # still its to end
    assert (await kernel.wait(pid))["result"] == {"done": True}
    assert kernel.verify_audit()[1] == []


async def test_the_hosts_values_nested_too_deep_are_refused_typed(kernel: Kernel) -> None:
    """An object, a message, an event's data: a process's are bounded as its arguments; the
    host's raised an untyped RecursionError past Python's limit, and under it were stored
    deeper than a planner's observation of them can be checkpointed."""
    await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
    pid = kernel.spawn("a")
    for depth in (MAX_STORED_DEPTH + 1, 5_000):
        with pytest.raises(InvalidArgument, match="nested too deep"):
            kernel.put_object("x", nested(depth), ns="s")
        last = kernel.audit()[-1]
        assert (last["syscall"], last["phase"]) == ("host.obj.put", "rejected")
        with pytest.raises(InvalidArgument, match="nested too deep"):
            kernel.send_message(None, pid, nested(depth))
        with pytest.raises(InvalidArgument, match="nested too deep"):
            kernel.raise_event("e", nested(depth))
    # Nothing of them was stored; values at the bound are.
    assert kernel.put_object("x", nested(MAX_STORED_DEPTH), ns="s")["version"] == 1
    assert kernel.get_object("x", ns="s")["value"] == nested(MAX_STORED_DEPTH)
    assert kernel.send_message(None, pid, "hello") and kernel.raise_event("e", [1]) > 0
    assert kernel.verify_audit()[1] == []
