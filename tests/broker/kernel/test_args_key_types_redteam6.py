"""Red team 6: a call's arguments with keys JSON cannot keep as they are (keys of two types,
so `{1: "a", "1": "b"}` too; a tuple key). `args_hash` writes canonical JSON with its keys
sorted, which raised an untyped TypeError: out of the host's `Kernel.call_tool`, and for a
planner's step out of the dispatcher, which ended the process as the planner's failure
(`PLANNER`, logged "planner of process N failed"). The dispatcher refused only text that is
not Unicode and values nested too deep that way. Severity: low (an embedder's planner or
host call hands such a value in; a model's or a sandbox's arguments are JSON already). Now
`InvalidArgument`, refused on the record before anything runs, and the process goes on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from broker import InvalidArgument, Kernel
from broker.planner import CallTool, Exit, ScriptedPlanner
from tests.conftest import open_image

KEYS: dict[str, Any] = {"keys colliding after JSON": {1: "a", "1": "b"},
                        "keys of two types": {1: "a", "b": 2}, "tuple key": {(1, 2): 3}}


def _put(value: Any) -> dict[str, Any]:
    return {"ns": "s", "name": "x", "type": "json", "value": value}


def _refused_calls(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["phase"] == "rejected"
            and r["syscall"] == "tool.call" and r["detail"]["error"] == "INVALID_ARGUMENT"]


@pytest.mark.parametrize("name", list(KEYS))
async def test_a_hosts_call_with_such_keys_is_refused_typed(tmp_path: Path, name: str) -> None:
    async with Kernel.open(tmp_path / "db", fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["obj:*:read,write"])
        with pytest.raises(InvalidArgument, match="keys"):
            await kernel.call_tool(pid, "put_object", _put({"v": KEYS[name]}))
        assert len(_refused_calls(kernel, pid)) == 1
        assert (await kernel.call_tool(pid, "put_object", _put({"v": 1})))["version"] == 1
        assert kernel.verify_audit()[1] == []


@pytest.mark.parametrize("name", list(KEYS))
async def test_a_planners_step_with_such_keys_is_refused_and_it_goes_on(
        tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture) -> None:
    async with Kernel.open(tmp_path / "db", fs_root=tmp_path / "fs") as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["obj:*:read,write"], planner=ScriptedPlanner([
            CallTool("put_object", _put({"v": KEYS[name]})),
            CallTool("put_object", _put({"v": 1})), Exit(0, "went on")]))
        with caplog.at_level(logging.ERROR):
            ended = await kernel.wait(pid)
        assert (ended["exit_code"], ended["result"]) == (0, "went on"), ended
        assert not [r for r in caplog.records if "planner of process" in r.getMessage()]
        assert len(_refused_calls(kernel, pid)) == 1
        assert kernel.get_object("x", ns="s")["value"] == {"v": 1}
        assert kernel.verify_audit()[1] == []
