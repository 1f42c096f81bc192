"""An image the host registers is bounded like everything the broker stores: nested past
`json_text.MAX_STORED_DEPTH` it is refused, typed and on the record, before any of it is
written (a scripted planner's actions ~990 deep raised an untyped RecursionError out of
`register_image`, unrecorded; ~975 deep were stored, where a deeper stack could not read them
again). A process's own registration is bounded already: its arguments are."""

from __future__ import annotations

from typing import Any

import pytest

from broker import InvalidArgument, Kernel, NotFound
from broker.json_text import MAX_STORED_DEPTH


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def scripted(name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "tools": ["now"], "needs": ["clock:*:read"],
            "planner": {"kind": "scripted", "actions": [{"tool": "now", "args": args}]}}


@pytest.mark.parametrize("depth", [MAX_STORED_DEPTH, 975, 5_000])
async def test_an_image_nested_too_deep_is_refused_on_the_record(kernel: Kernel,
                                                                 depth: int) -> None:
    with pytest.raises(InvalidArgument, match="nested too deep"):
        await kernel.register_image(scripted("deep", {"x": nested(depth)}))
    last = kernel.audit()[-1]
    assert (last["syscall"], last["phase"]) == ("host.image", "rejected")
    assert last["detail"]["error"] == "INVALID_ARGUMENT"
    with pytest.raises(NotFound):  # nothing of it stored
        kernel.spawn("deep")
    # A name that is itself a deep value: refused the same way, never a RecursionError.
    with pytest.raises(InvalidArgument):
        await kernel.register_image({"name": nested(depth), "tools": ["now"]})
    assert kernel.audit()[-1]["phase"] == "rejected"
    # The neighbour: an image well within the bound registers and runs its planner.
    await kernel.register_image(scripted("shallow", {"x": nested(100)}))
    pid = kernel.spawn("shallow", caps=["clock:*:read"])
    assert (await kernel.wait(pid))["exit_code"] == 0
    assert kernel.verify_audit()[1] == []


async def test_a_scripted_action_that_is_not_one_is_named_briefly(kernel: Kernel) -> None:
    image = {"name": "odd", "tools": ["now"], "needs": ["clock:*:read"],
             "planner": {"kind": "scripted", "actions": [{"what": "x" * 100_000}]}}
    await kernel.register_image(image)
    with pytest.raises(InvalidArgument, match="not an action") as refused:
        kernel.spawn("odd", caps=["clock:*:read"])
    assert len(refused.value.message) < 200  # (was the whole value: 100,000 characters)
