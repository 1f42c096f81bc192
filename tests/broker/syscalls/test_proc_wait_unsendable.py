"""Lane loose: a `proc.wait` whose child's end a sandboxed tool could not be sent (its
result nested past a frame's depth: the channel refused the answer and sent the tool
`InvalidArgument`) was recorded `ok`, with the result, while the tool got the failure: the
chain claimed a delivery that did not happen. Now the wait's outcome is that failure,
typed, as the tool sees it; a child's end that fits is delivered and recorded as before.
Real TypeScript in Deno."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker import AgentImage
from broker.protocol.limits import DEFAULT_LIMITS
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import SLOW_OK, deno, kernel_over  # noqa: F401

TOOL = {"name": "wait_child", "lang": "ts", "schema": {"type": "object"}, "source": """
export default async function run(args: any, libos: any) {
  const pid = await libos.proc.spawn(args.image, []);
  try { return {ok: await libos.proc.wait(pid, 30)}; }
  catch (e: any) { return {error: e.code}; }
}"""}


def _nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


def _ender(name: str, result: Any) -> AgentImage:
    return AgentImage(name, tools=("now",), needs=("clock:*:read",),
                      planner={"kind": "scripted", "actions": [{"exit": 0, "result": result}]})


def _waits(kernel: Any, pid: int) -> list[dict[str, Any]]:
    return [r["detail"] for r in kernel.audit(pid)
            if r["syscall"] == "proc.wait" and "ok" in r["detail"]]


async def test_a_childs_end_a_tool_cannot_be_sent_is_the_waits_recorded_failure(
        tmp_path: Path, deno: DenoSandbox) -> None:  # noqa: F811
    async with kernel_over(tmp_path, deno, SLOW_OK) as kernel:
        await kernel.register_image(_ender("deep", _nested(DEFAULT_LIMITS.max_depth + 8)))
        await kernel.register_image(_ender("plain", {"v": _nested(3)}))
        await kernel.register_image(AgentImage("parent", tools=("register_tool",), needs=(
            "tool:ts:register", "proc:*:spawn")))
        pid = kernel.spawn("parent", caps=["tool:ts:register", "proc:*:spawn"])
        await kernel.call_tool(pid, "register_tool", TOOL)
        assert await kernel.call_tool(pid, "wait_child", {"image": "deep"}) == {
            "error": "INVALID_ARGUMENT"}
        [refused] = _waits(kernel, pid)
        assert (refused["ok"], refused["error"]) == (False, "INVALID_ARGUMENT")
        assert "cannot be sent" in refused["message"] and "result" not in refused
        # The neighbour: an end that fits is delivered, and recorded so.
        got = await kernel.call_tool(pid, "wait_child", {"image": "plain"})
        assert got["ok"]["result"] == {"v": _nested(3)}
        assert [w["ok"] for w in _waits(kernel, pid)] == [False, True]
        assert kernel.verify_audit()[1] == []
