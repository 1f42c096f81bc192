"""A call's result nested past `too_deep.MAX_DEPTH` (512, the bound a call's arguments have)
is refused where the dispatcher records it: the call's outcome is `InvalidArgument`, recorded,
and the caller goes on. A result taken just under Python's recursion limit could not be read
again from a deeper stack, and a planner's checkpoint holds it a level deeper still.

Where a result comes from: a sandboxed tool's (TypeScript) and a host tool's already stop at
the frame's nesting (32), typed; a builtin's can carry what another process wrote, such as
`proc.wait` with a child's exit result 600 deep. An image and an exit result are bounded
where they enter now (`test_deep_image`, `test_deep_exit`), so the dispatcher's bound stands
last, for what reached the store otherwise (an older broker's rows): the tests lift the entry
bounds (`entry_bounds_lifted`) to make such a child. Both backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import InvalidArgument, Kernel, ToolFailed
from broker.kernel import too_deep
from broker.kernel.too_deep import MAX_DEPTH
from tests.broker.kernel.test_deep_arguments import nested
from tests.conftest import open_image

TOO_DEEP = "the result is nested too deep to store"
DEEP = 600


@pytest.fixture(autouse=True)
def entry_bounds_lifted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child whose image and exit result nest 600 deep, as an older broker let through."""
    monkeypatch.setattr(too_deep, "refuse_stored", lambda value, what: None)


def _exits_with(value: Any) -> dict[str, Any]:
    return {"kind": "scripted", "actions": [{"exit": 0, "result": value}]}


async def _children(kernel: Kernel) -> None:
    await open_image(kernel, "deep", tools=(), needs=(), planner=_exits_with(nested(DEEP)))
    await open_image(kernel, "fits", tools=(), needs=(),
                     planner=_exits_with(nested(MAX_DEPTH - 10)))


def _refused_outcomes(kernel: Kernel, pid: int, syscall: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["phase"] == "outcome"
            and r["syscall"] == syscall and r["detail"].get("error") == "INVALID_ARGUMENT"]


async def test_a_host_call_whose_result_is_too_deep_is_refused_typed(
        store_at: Path | str, tmp_path: Path) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await _children(kernel)
        await open_image(kernel, "parent", tools=("spawn", "wait"), needs=("proc:*:spawn",))
        pid = kernel.spawn("parent", caps=["proc:*:spawn"])
        deep = await kernel.call_tool(pid, "spawn", {"image": "deep"})
        with pytest.raises(InvalidArgument, match=TOO_DEEP):
            await kernel.call_tool(pid, "wait", {"pid": deep})
        [wait] = _refused_outcomes(kernel, pid, "proc.wait")
        assert TOO_DEEP in wait["detail"]["message"]
        [call] = _refused_outcomes(kernel, pid, "tool.call")
        assert call["detail"]["intent"] is not None
        # The process goes on: a child whose result fits is waited for, its result whole.
        fits = await kernel.call_tool(pid, "spawn", {"image": "fits"})
        done = await kernel.call_tool(pid, "wait", {"pid": fits})
        assert done["result"] == nested(MAX_DEPTH - 10)
        assert kernel.verify_audit()[1] == []


async def test_a_planners_step_whose_result_is_too_deep_is_refused_typed(
        store_at: Path | str, tmp_path: Path) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await _children(kernel)
        await open_image(kernel, "parent", tools=("spawn", "wait"), needs=("proc:*:spawn",),
                         planner={"kind": "scripted", "actions": [
                             {"tool": "spawn", "args": {"image": "deep"}},
                             {"tool": "wait", "args": {"pid": 2}},
                             {"tool": "spawn", "args": {"image": "fits"}},
                             {"tool": "wait", "args": {"pid": 3}},
                             {"exit": 0, "result": "went on"}]})
        pid = kernel.spawn("parent", caps=["proc:*:spawn"])
        with trio.fail_after(30):
            status = await kernel.wait(pid)
        assert status["state"] == "exited" and status["result"] == "went on", status
        [wait] = _refused_outcomes(kernel, pid, "proc.wait")
        assert TOO_DEEP in wait["detail"]["message"]
        waited = [r["detail"]["result"]["exit_code"] for r in kernel.audit(pid)
                  if r["phase"] == "outcome" and r["syscall"] == "proc.wait"
                  and r["detail"].get("ok")]
        assert waited == [0]  # the second child's, whose result fits
        assert kernel.verify_audit()[1] == []
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        assert kernel.verify_audit()[1] == []  # and from the next broker's stack


TS_DEEP = """export default async function run(args: any, libos: any) {
  let v: any = "x"; for (let i = 0; i < 600; i++) v = [v]; return v; }"""


async def test_a_typescript_tools_deep_result_stops_at_the_frame(tmp_path: Path) -> None:
    """(Pinned: a sandbox's result is bounded by the frame's nesting, far under 512.)"""
    from sandboxes.deno import DenoSandbox

    async with DenoSandbox(spares=0) as deno, Kernel.open(
            tmp_path / "db", sandboxes=[deno], fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel, "a", tools=({"name": "deep", "lang": "ts",
                                               "source": TS_DEEP},))
        pid = kernel.spawn("a", caps=[])
        with pytest.raises(ToolFailed, match="nesting deeper than 32"):
            await kernel.call_tool(pid, "deep", {})
        [outcome] = [r for r in kernel.audit(pid) if r["syscall"] == "tool.call"
                     and r["phase"] in ("outcome", "intent+outcome")]
        assert outcome["detail"]["error"] == "TOOL_FAILED"
