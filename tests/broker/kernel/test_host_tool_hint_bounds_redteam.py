"""Red team (embedding surface): a host tool's arguments bounded where the embedder bounded
them. `Annotated[float, Field(gt=0, le=100)]`, pydantic's way to bound a parameter, lost its
bound: the hints were read without their extras, so the schema (and pydantic's own check)
said only `number`, and a model's 1e9 reached `pay`. And NaN (no JSON number, but Python's
json reads a model's `NaN`) passed every `minimum`/`maximum` of a given schema, comparing
neither below nor above. A real kernel over real SQLite, a planner's calls and the host's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import pytest
import trio
from pydantic import Field

from broker import AgentImage, CallTool, InvalidArgument, Kernel, ScriptedPlanner
from broker.schema import compile_schema

PAID: list[Any] = []


def pay(amount: Annotated[float, Field(gt=0, le=100)],
        memo: Annotated[str, Field(max_length=8)] = "") -> str:
    """Pay at most 100."""
    PAID.append(amount)
    return "paid"


GIVEN = {"type": "object", "required": ["amount"], "additionalProperties": False,
         "properties": {"amount": {"type": "number", "minimum": 0, "maximum": 100}}}


def pay_given(amount: float) -> str:
    PAID.append(amount)
    return "paid"


def _refused(kernel: Kernel, pid: int) -> list[str | None]:
    """The errors of the calls' ends (a `tool.call` the table refused, or the host tool's)."""
    return [r["detail"].get("error") for r in kernel.audit(pid)
            if r["phase"] in ("outcome", "intent+outcome", "rejected")
            and r["syscall"] in ("tool.call", "host.pay", "host.pay_given")]


@pytest.mark.parametrize(("tool", "args"), [
    ("pay", {"amount": 1e9}),
    ("pay", {"amount": 0}),
    ("pay", {"amount": 5, "memo": "x" * 9}),
    ("pay", {"amount": float("nan")}),
    ("pay_given", {"amount": float("nan")}),
    ("pay_given", {"amount": 101}),
])
async def test_a_bound_the_embedder_gave_holds_against_the_model(
        db_path: Path, tool: str, args: dict[str, Any]) -> None:
    PAID.clear()
    async with Kernel.open(db_path) as kernel:
        kernel.host_tool(pay, kind="bank", right="pay")
        kernel.host_tool(pay_given, kind="bank", right="pay", schema=GIVEN)
        await kernel.register_image(AgentImage("b", tools=("pay", "pay_given"),
                                               needs=["bank:*:pay"]))
        # The model's text as a planner parses it (Python's json reads NaN).
        parsed = json.loads(json.dumps(args))
        pid = kernel.spawn("b", caps=["bank:*:pay"], planner=ScriptedPlanner(
            [CallTool(tool, parsed), CallTool(tool, {"amount": 100})]))
        with trio.fail_after(20):
            assert (await kernel.wait(pid))["state"] == "exited"
        assert PAID == [100]  # the neighbour, within the bound, ran
        assert _refused(kernel, pid)[0] == "INVALID_ARGUMENT"
        host = kernel.spawn("b", caps=["bank:*:pay"])
        with pytest.raises(InvalidArgument):
            await kernel.call_tool(host, tool, parsed)
        assert PAID == [100] and _refused(kernel, host) == ["INVALID_ARGUMENT"]
        [listed] = [t for t in kernel.list_tools(host) if t["name"] == tool]
        assert listed["schema"]["properties"]["amount"].get("maximum") == 100  # as shown


@pytest.mark.parametrize(("bound", "fits"), [
    ({"minimum": 0}, 0.0), ({"maximum": 0}, -0.0), ({"exclusiveMinimum": 0}, 0.5),
    ({"exclusiveMaximum": 0}, -0.5)])
def test_nan_is_outside_every_bound(bound: dict[str, Any], fits: float) -> None:
    schema = compile_schema({"type": "number", **bound})
    with pytest.raises(InvalidArgument, match="not NaN"):
        schema.check(float("nan"), "value")
    schema.check(fits, "value")  # a number within it still fits
    compile_schema({"type": "number"}).check(float("nan"), "value")  # unbounded: as before
