"""A planner's action holding a lone surrogate (a scripted or embedder's planner can emit one;
no UTF-8 encodes it) is saved in the checkpoint before its step, a write deferred to whoever
commits next. It must not wait there for ever, failing every later commit of every process
with an untyped UnicodeEncodeError (it did: another process's `call_tool` raised it, and the
audit could not be read). The call is refused typed and recorded, the process goes on, and so
does a neighbour."""

from __future__ import annotations

from pathlib import Path

import trio

from broker import CallTool, Kernel, ScriptedPlanner
from tests.conftest import open_image


async def test_a_lone_surrogate_in_an_action_does_not_wedge_the_store(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        Path(kernel.fs.root, "d").mkdir(exist_ok=True)  # type: ignore[attr-defined]
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/**:read,write"], planner=ScriptedPlanner([
            CallTool("write_file", {"path": "/d/x", "data": "lone \ud800"}),
            CallTool("write_file", {"path": "/d/y", "data": "fine"})]))
        with trio.fail_after(30):
            status = await kernel.wait(pid)
        assert status["state"] == "exited" and status["exit_code"] == 0, status
        assert Path(kernel.fs.root, "d", "y").read_text() == "fine"  # type: ignore[attr-defined]
        assert not Path(kernel.fs.root, "d", "x").exists()  # type: ignore[attr-defined]
        [refused] = [r for r in kernel.audit(pid) if r["phase"] == "rejected"]
        assert refused["detail"]["error"] == "INVALID_ARGUMENT"
        other = kernel.spawn("agent", caps=["fs:/**:read,write"])  # the neighbour goes on
        await kernel.call_tool(other, "write_file", {"path": "/d/z", "data": "ok"})
        assert not kernel.store.deferred
        assert kernel.verify_audit()[1] == []
    async with Kernel.open(db_path) as kernel:  # and the checkpoint reads back
        assert kernel.process_info(pid)["state"] == "exited"
