"""Red team 10 on lane loose's c870d50 (a host spawn's args held to `refuse_unplain`): the
checker refused keys of two types, but keys all of one type other than text passed (`{1:
"a"}`, `{True: "x"}`, `{None: 0}`, `{1.5: 0}`): JSON writes them as text, so what was kept
is not what was given. A message `{1: "a"}` reached its receiver as `{"1": "a"}`; a spawn's
args stayed `{1: "a"}` in the broker's memory while what JSON carries of them (a model
planner's goal, a front end) said `{"1": "a"}`. Severity: low (the host's own values; a
receiver's key lookups miss, two views of one value). Now refused `InvalidArgument`, on the
record, with every other host value the checker guards; text keys pass as before."""

from __future__ import annotations

from typing import Any

import pytest

from broker import AgentImage, InvalidArgument, Kernel

KEYS: dict[str, Any] = {"int": {1: "a"}, "bool": {True: "x"}, "none": {None: 0},
                        "float": {1.5: 0}, "nested": {"k": [{2: "b"}]}}


@pytest.mark.parametrize("name", list(KEYS))
async def test_keys_json_writes_as_text_are_refused(kernel: Kernel, name: str) -> None:
    await kernel.register_image(AgentImage("a", tools=("receive",), needs=("clock:*:read",)))
    pid = kernel.spawn("a", caps=["clock:*:read"])
    value = KEYS[name]
    with pytest.raises(InvalidArgument, match="not plain JSON"):
        kernel.spawn("a", args=value)
    last = kernel.audit()[-1]
    assert (last["syscall"], last["phase"]) == ("host.spawn", "rejected")
    with pytest.raises(InvalidArgument, match="not plain JSON"):
        kernel.send_message(None, pid, value)
    # The neighbour: text keys, kept as they are.
    kernel.send_message(None, pid, {"1": "a", "k": [{"2": "b"}]})
    got = await kernel.call_tool(pid, "receive", {"timeout": 1})
    assert got["body"] == {"1": "a", "k": [{"2": "b"}]}
    assert kernel.process(kernel.spawn("a", args={"1": "a"})).args == {"1": "a"}
