"""Red team: arguments were refused as too deep only when encoding them at the dispatcher
recursed past Python's limit, a bound that moves with the stack the call came in on. A
host's call nested just under it there (about 950 levels under pytest) was taken: its
intent, payload and object stored. Every later reader encoding it from a deeper stack then
failed: `verify_audit` (and `libos audit --verify`) raised an untyped RecursionError for
the whole store, at every open after, and the object stored could not be read back. Calls
are now refused past a fixed nesting (`too_deep.MAX_DEPTH`), far under the limit, so what is
taken can be read again anywhere. Both backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker import InvalidArgument, Kernel
from broker.kernel.too_deep import MAX_DEPTH
from broker.planner import CallTool, Exit, Observation
from tests.broker.kernel.test_deep_arguments import CAPS, TOO_DEEP, _image, nested, put


def _deepest_taken(limit: int) -> int:
    """How deep a value the encoder takes from this stack, less a few levels."""
    import json

    for depth in range(limit, 0, -1):
        try:
            json.dumps(put(nested(depth)))
            return depth - 4
        except RecursionError:
            continue
    return 0


async def test_a_call_nested_just_under_the_recursion_limit_is_refused(
        store_at: Path | str, tmp_path: Path) -> None:
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        await _image(kernel)
        pid = kernel.spawn("a", caps=CAPS)
        depth = _deepest_taken(1000)
        assert depth > MAX_DEPTH + 100
        with pytest.raises(InvalidArgument, match=TOO_DEEP):
            await kernel.call_tool(pid, "put_object", put(nested(depth)))
        with pytest.raises(InvalidArgument, match=TOO_DEEP):
            await kernel.call_tool(pid, "put_object", put(nested(MAX_DEPTH)))
        assert kernel.verify_audit()[1] == []

        # As deep as the bound lets (the call's own two levels, the value's list): taken,
        # read back, and the chain verifies, now and at the next open.
        await kernel.call_tool(pid, "put_object", put(nested(MAX_DEPTH - 3)))
        got = await kernel.call_tool(pid, "get_object", {"name": "o"})
        assert got["value"] == nested(MAX_DEPTH - 3)
        assert kernel.verify_audit()[1] == []
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        assert kernel.verify_audit()[1] == []


class _Descending:
    """A planner that calls with arguments nested from just under the recursion limit down
    to just past `MAX_DEPTH`, a step each, then exits with the errors it saw."""

    def __init__(self) -> None:
        self.depths = list(range(990, MAX_DEPTH, -3))

    async def next_action(self, history: list[Observation]) -> CallTool | Exit:
        if self.depths:
            return CallTool("put_object", put(nested(self.depths.pop(0))))
        return Exit(0, sorted({(o.error or {}).get("code", "none") for o in history}))


async def test_a_planners_steps_nested_under_the_limit_are_refused(
        store_at: Path | str, tmp_path: Path) -> None:
    """A step's checkpoint before it (the action pending) could be encoded while the one
    after it (the observation holding the action, a level deeper) could not: the process
    ended as a PLANNER failure with an untyped RecursionError, the deep pending checkpoint
    stored. Now every such step is refused before its checkpoint, and the process goes on."""
    async with Kernel.open(store_at, fs_root=tmp_path / "fs",
                           planners=lambda image, pid: _Descending()) as kernel:
        await _image(kernel)
        pid = kernel.spawn("a", caps=CAPS)
        with trio.fail_after(60):
            status = await kernel.wait(pid)
        assert status["state"] == "exited" and status["exit_code"] == 0, status
        assert status["result"] == ["INVALID_ARGUMENT"]
        assert not [r for r in kernel.audit(pid) if r["syscall"] == "obj.put"]
        assert kernel.verify_audit()[1] == []
    async with Kernel.open(store_at, fs_root=tmp_path / "fs") as kernel:
        assert kernel.verify_audit()[1] == []
