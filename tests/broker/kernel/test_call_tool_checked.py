"""The `tool.call` map the kernel builds itself (`Kernel.call_tool`'s, a planner's step's) is
of its syscall's shape when its name is, so the dispatcher does not check it again (issue 17:
a schema check per call and per step for nothing); a name out of that shape, a host's or a
planner's, is checked and refused as ever, recorded."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from broker import CallTool, InvalidArgument, Kernel, ScriptedPlanner
from broker.syscalls.table import TABLE
from tests.conftest import open_image

LONG = "n" * 300  # (`tool.call`'s name: 1 to 256 characters)


class _Counted:
    """A schema that notes each map it checks, then checks it (the real check runs)."""

    def __init__(self, schema: Any, seen: list[Any]) -> None:
        self._schema, self._seen = schema, seen

    def check(self, args: Any, name: str) -> Any:
        self._seen.append(args)
        return self._schema.check(args, name)


@pytest.fixture
def tool_call_checks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The `tool.call` maps the dispatcher checks against its schema."""
    seen: list[Any] = []
    spec = TABLE["tool.call"]
    monkeypatch.setitem(TABLE, "tool.call", replace(spec, validator=_Counted(spec.validator, seen)))
    return seen


async def test_the_kernels_own_map_is_not_checked_again(kernel: Kernel,
                                                        tool_call_checks: list[Any]) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["clock:*:read"])
    assert isinstance(await kernel.call_tool(pid, "now"), float | int | dict)
    assert tool_call_checks == []
    [intent] = [r for r in kernel.audit(pid) if r["syscall"] == "tool.call"][:1]
    assert intent["resource"] == "now"  # recorded as ever
    assert kernel.verify_audit()[1] == []


async def test_a_hosts_name_out_of_shape_is_checked_and_refused(
        kernel: Kernel, tool_call_checks: list[Any]) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["clock:*:read"])
    for name in (LONG, "", 7):
        with pytest.raises(InvalidArgument):
            await kernel.call_tool(pid, name)  # type: ignore[arg-type]
    assert [m["name"] for m in tool_call_checks] == [LONG, "", 7]
    rejected = [r for r in kernel.audit(pid) if r["phase"] == "rejected"]
    assert [(r["syscall"], r["detail"]["error"]) for r in rejected] == [
        ("tool.call", "INVALID_ARGUMENT")] * 3
    await kernel.call_tool(pid, "now")  # the neighbour: a call of the right shape runs


async def test_a_planners_name_out_of_shape_is_checked_and_refused(
        kernel: Kernel, tool_call_checks: list[Any]) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["clock:*:read"], planner=ScriptedPlanner([
        CallTool(LONG, {}), CallTool("", {}), CallTool("now", {})]))
    await kernel.wait(pid, timeout=30)
    assert [m["name"] for m in tool_call_checks] == [LONG, ""]  # each checked; not "now"
    records = [(r["phase"], r["syscall"], r["resource"], r["detail"].get("error"))
               for r in kernel.audit(pid) if r["syscall"] == "tool.call"]
    assert records == [("rejected", "tool.call", None, "INVALID_ARGUMENT")] * 2 + [
        ("intent+outcome", "tool.call", "now", None)]  # the neighbour ran, recorded as ever
    errors = [o.error["code"] if o.error else None for o in kernel.process(pid).history]
    assert errors == ["INVALID_ARGUMENT"] * 2 + [None]  # each refusal its planner saw
    assert kernel.verify_audit()[1] == []
