"""Arguments nested thousands deep (a list in a list) cannot be encoded as JSON: Python's
encoder stops at its recursion limit. A host's `call_tool` and a planner's step with such
arguments used to raise an untyped `RecursionError` (a planner's ended its process as a
PLANNER failure). They are refused as `InvalidArgument`, with one `rejected` record keeping
a summary, nothing else written (no intent, no checkpoint of the step), and the process
goes on: its next call runs, and the chain verifies. (A sandbox's frames refuse nesting
past 32 in the guest: tests/broker/protocol.) Both backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import InvalidArgument, Kernel
from broker.kernel.image import AgentImage
from broker.planner import CallTool, Exit, Observation

TOO_DEEP = "the arguments are nested too deep to encode as JSON"
CAPS = ["obj:*:read,write"]


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def put(value: Any) -> dict[str, Any]:
    return {"name": "o", "type": "json", "value": value}


async def _image(kernel: Kernel) -> None:
    await kernel.register_image(AgentImage("a", tools=("put_object", "get_object"),
                                           needs=tuple(CAPS)))


def _rejected(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["phase"] == "rejected"]


@pytest.mark.parametrize("depth", [5_000, 100_000])
async def test_a_host_call_nested_too_deep_is_refused_typed(
        store_at: Path | str, tmp_path: Path, depth: int) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await _image(kernel)
        pid = kernel.spawn("a", caps=CAPS)
        before = len(kernel.audit())
        with pytest.raises(InvalidArgument, match=TOO_DEEP):
            await kernel.call_tool(pid, "put_object", put(nested(depth)))
        [record] = kernel.audit()[before:]  # only the refusal: nothing written half
        assert record["phase"] == "rejected" and record["syscall"] == "tool.call"
        assert record["detail"]["error"] == "INVALID_ARGUMENT"
        assert TOO_DEEP in record["detail"]["message"]

        # The process goes on: the same call, nested as far as JSON allows, runs.
        done = await kernel.call_tool(pid, "put_object", put(nested(500)))
        assert done["version"] == 1
        got = await kernel.call_tool(pid, "get_object", {"name": "o"})
        assert got["value"] == nested(500)
        assert kernel.verify_audit()[1] == []


class _DeepThenPlain:
    """A planner that calls with arguments nested too deep, then plainly, then exits with
    what it saw."""

    def __init__(self) -> None:
        self.calls = [CallTool("put_object", put(nested(5_000))),
                      CallTool("put_object", put([1]))]

    async def next_action(self, history: list[Observation]) -> CallTool | Exit:
        if self.calls:
            return self.calls.pop(0)
        return Exit(0, [[o.error, o.result] for o in history])


async def test_a_planners_step_nested_too_deep_is_refused_typed(
        store_at: Path | str, tmp_path: Path) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs",
                           planners=lambda image, pid: _DeepThenPlain()) as kernel:
        await _image(kernel)
        pid = kernel.spawn("a", caps=CAPS)
        with trio.fail_after(15):
            status = await kernel.wait(pid)
        assert status["state"] == "exited" and status["exit_code"] == 0, status
        (refused, none), (ok, stored) = status["result"]
        assert refused["code"] == "INVALID_ARGUMENT" and TOO_DEEP in refused["message"]
        assert none is None and ok is None and stored["version"] == 1
        [record] = _rejected(kernel, pid)
        assert record["syscall"] == "tool.call" and TOO_DEEP in record["detail"]["message"]
        assert record["detail"]["args"]["name"] == "put_object"
        # The refused step ran nothing: the only object write is the plain call's.
        assert [r["phase"] for r in kernel.audit(pid) if r["syscall"] == "obj.put"] == [
            "intent", "outcome"]
        assert kernel.verify_audit()[1] == []
