"""Red team 41: NaN at a bound refused for the whole value. A bound's NaN refusal was a schema
error like any other, so a `not` around the bound took it for the bound's "no" and let NaN
by: `refund(amount)` whose schema says the amount is below zero (`not: {minimum: 0}`) was run
with NaN; an `if`/`then` on a bound skipped its `then`. A real kernel over real SQLite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, InvalidArgument, Kernel
from broker.schema import compile_schema

REFUND = {"type": "object", "required": ["amount"], "additionalProperties": False,
          "properties": {"amount": {"type": "number", "not": {"minimum": 0}}}}


async def test_nan_never_passes_a_bound_a_not_wraps(db_path: Path) -> None:
    refunded: list[Any] = []

    def refund(amount: float) -> str:
        refunded.append(amount)
        return "refunded"

    async with Kernel.open(db_path) as kernel:
        kernel.host_tool(refund, kind="bank", right="refund", schema=REFUND)
        await kernel.register_image(AgentImage("r", tools=("refund",),
                                               needs=["bank:*:refund"]))
        pid = kernel.spawn("r", caps=["bank:*:refund"])
        nan = json.loads('{"amount": NaN}')  # the model's text, as Python's json reads it
        with pytest.raises(InvalidArgument, match="not NaN"):
            await kernel.call_tool(pid, "refund", nan)
        assert refunded == []
        assert await kernel.call_tool(pid, "refund", {"amount": -5}) == "refunded"
        assert refunded == [-5]  # the neighbour, below zero, ran
        with pytest.raises(InvalidArgument):
            await kernel.call_tool(pid, "refund", {"amount": 5})
        errors = [r["detail"].get("error") for r in kernel.audit(pid)
                  if r["phase"] in ("outcome", "intent+outcome", "rejected")]
        assert errors.count("INVALID_ARGUMENT") == 2


@pytest.mark.parametrize("schema", [
    {"if": {"minimum": 100}, "then": {"const": 100}},
    {"anyOf": [{"maximum": 10}, {"type": "string"}]},
    {"oneOf": [{"not": {"maximum": 10}}, {"type": "string"}]},
])
def test_nan_at_a_bound_under_a_combinator_is_refused(schema: dict[str, Any]) -> None:
    compiled = compile_schema({"type": ["number", "string"], **schema})
    with pytest.raises(InvalidArgument, match="not NaN"):
        compiled.check(float("nan"), "value")
    compiled.check(100 if "if" in schema else 5 if "anyOf" in schema else 11, "value")
