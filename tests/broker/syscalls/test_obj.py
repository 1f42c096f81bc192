"""Object Memory: typed payloads, versions, own namespace by default, shared by capability."""

from __future__ import annotations

import pytest

from broker import Conflict, InvalidArgument, Kernel, NotCapable, NotFound
from tests.conftest import open_image

NOTE = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
        "additionalProperties": False}


async def test_versions_and_types(kernel: Kernel) -> None:
    await open_image(kernel, types={"note": NOTE})
    pid = kernel.spawn("agent")
    put = await kernel.call_tool(pid, "put_object", {"name": "n", "type": "note",
                                                     "value": {"text": "one"}})
    assert put == {"ns": f"proc/{pid}", "name": "n", "version": 1}
    await kernel.call_tool(pid, "put_object", {"name": "n", "type": "note",
                                               "value": {"text": "two"}, "expect_version": 1})
    with pytest.raises(Conflict):
        await kernel.call_tool(pid, "put_object", {"name": "n", "type": "note",
                                                   "value": {"text": "late"},
                                                   "expect_version": 1})
    latest = await kernel.call_tool(pid, "get_object", {"name": "n"})
    assert latest["version"] == 2 and latest["value"] == {"text": "two"}
    first = await kernel.call_tool(pid, "get_object", {"name": "n", "version": 1})
    assert first["value"] == {"text": "one"}
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "put_object", {"name": "n", "type": "note",
                                                   "value": {"text": 3}})
    with pytest.raises(InvalidArgument):
        await kernel.call_tool(pid, "put_object", {"name": "n", "type": "undefined",
                                                   "value": {}})
    with pytest.raises(NotFound):
        await kernel.call_tool(pid, "get_object", {"name": "missing"})
    assert await kernel.call_tool(pid, "list_objects", {}) == [
        {"name": "n", "version": 2, "type": "note"}]


async def test_namespaces_are_private_unless_granted(kernel: Kernel) -> None:
    await open_image(kernel)
    alice = kernel.spawn("agent", caps=["obj:team:read,write"])
    bob = kernel.spawn("agent", caps=["obj:team:read"])
    await kernel.call_tool(alice, "put_object", {"name": "private", "type": "json",
                                                 "value": 1})
    await kernel.call_tool(alice, "put_object", {"ns": "team", "name": "plan", "type": "json",
                                                 "value": {"step": 1}})
    assert (await kernel.call_tool(bob, "get_object", {"ns": "team", "name": "plan"}))[
        "value"] == {"step": 1}
    with pytest.raises(NotCapable):
        await kernel.call_tool(bob, "get_object", {"ns": f"proc/{alice}", "name": "private"})
    with pytest.raises(NotCapable):
        await kernel.call_tool(bob, "put_object", {"ns": "team", "name": "plan",
                                                   "type": "json", "value": 2})
    denied = [r for r in kernel.audit(bob) if r["phase"] == "denied"]
    assert [d["resource"] for d in denied] == [f"proc/{alice}/private", "team/plan"]


async def test_objects_survive_reopening(db_path: object) -> None:
    async with Kernel.open(db_path) as kernel:
        await open_image(kernel, types={"note": NOTE})
        pid = kernel.spawn("agent")
        for text in ("a", "b"):
            await kernel.call_tool(pid, "put_object", {"name": "n", "type": "note",
                                                       "value": {"text": text}})
    async with Kernel.open(db_path) as kernel:
        assert (await kernel.call_tool(pid, "get_object", {"name": "n", "version": 1}))[
            "value"] == {"text": "a"}
        assert (await kernel.call_tool(pid, "get_object", {"name": "n"}))["version"] == 2
        # The type survives too: a bad payload is still refused.
        with pytest.raises(InvalidArgument):
            await kernel.call_tool(pid, "put_object", {"name": "n", "type": "note",
                                                       "value": {}})
