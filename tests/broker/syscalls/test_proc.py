"""proc primitives: self, spawn with attenuated capabilities, wait, signal, exit."""

from __future__ import annotations

import pytest
import trio

from broker import Kernel, NotCapable, NotFound
from tests.conftest import open_image


async def test_spawn_narrows_and_escalation_is_refused(kernel: Kernel) -> None:
    await open_image(kernel)
    parent = kernel.spawn("agent", caps=["fs:/data/**:read", "proc:agent:spawn"])
    child = await kernel.call_tool(parent, "spawn", {
        "image": "agent", "caps": ["fs:/data/public/**:read"]})
    info = await kernel.call_tool(child, "whoami", {})
    assert info["parent"] == parent and info["lineage"] == [parent]
    held = {(c["kind"], c["scope"]) for c in kernel.capabilities(child)}
    assert held == {("fs", "/data/public/**"), ("obj", f"proc/{child}")}
    for wider in (["fs:/data/**:read,write"], ["fs:/**:read"], ["clock:*:read"],
                  ["fs:/data/public/**:read", "fs:/database/**:read"]):
        with pytest.raises(NotCapable):
            await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": wider})
    # Escalation is refused by the check itself: a denial, before any effect.
    refusals = [r for r in kernel.audit(parent)
                if r["syscall"] == "proc.spawn" and r["phase"] == "denied"]
    assert len(refusals) == 4 and all(r["detail"]["error"] == "NOT_CAPABLE" for r in refusals)
    assert all("escalation" in r["detail"]["message"] or "declare" in r["detail"]["message"]
               for r in refusals)
    denials = [e for e in kernel.store.events(pid=parent) if e["kind"] == "denied"]
    assert len(denials) == 4
    # A refused spawn created nothing.
    assert [p["pid"] for p in kernel.ps()] == [parent, child]


async def test_spawn_needs_proc_capability_for_that_image(kernel: Kernel) -> None:
    await open_image(kernel)
    await open_image(kernel, "other")
    pid = kernel.spawn("agent", caps=["proc:other:spawn"])
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "spawn", {"image": "agent"})


async def test_image_needs_cap_what_a_spawn_may_grant(kernel: Kernel) -> None:
    await open_image(kernel, "narrow", needs=("fs:/tmp/**:read",))
    with pytest.raises(NotCapable):
        kernel.spawn("narrow", caps=["fs:/**:read"])
    assert kernel.ps() == []


async def test_wait_and_signal_only_reach_descendants(kernel: Kernel) -> None:
    await open_image(kernel, "sleeper", planner={"kind": "scripted", "actions": [
        {"tool": "sleep", "args": {"seconds": 3600}}]})
    await open_image(kernel)
    a = kernel.spawn("agent", caps=["proc:sleeper:spawn", "clock:*:sleep"])
    b = kernel.spawn("agent", caps=["proc:sleeper:spawn", "clock:*:sleep"])
    child = await kernel.call_tool(a, "spawn", {"image": "sleeper", "caps": ["clock:*:sleep"]})
    with pytest.raises(NotFound):
        await kernel.call_tool(b, "wait", {"pid": child, "timeout": 0})
    with pytest.raises(NotCapable):
        await kernel.call_tool(b, "signal", {"pid": child, "signal": "kill"})
    denied = [r for r in kernel.audit(b) if r["syscall"] == "proc.signal"]
    assert [(r["phase"], r["resource"]) for r in denied] == [("denied", str(child))]
    assert kernel.process(child).alive
    timed_out = await kernel.call_tool(a, "wait", {"pid": child, "timeout": 0.01})
    # Timed out while the child lives (on a loaded machine it may not have stepped yet).
    assert timed_out["state"] in ("runnable", "running", "waiting")
    await kernel.call_tool(a, "signal", {"pid": child, "signal": "kill"})
    with trio.fail_after(5):
        status = await kernel.call_tool(a, "wait", {"pid": child})
    assert status["state"] == "killed" and status["reason"] == f"killed by {a}"


async def test_exit_ends_a_host_driven_process(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent")
    await kernel.dispatcher.run(kernel.process(pid), None, "proc.exit",
                                {"code": 7, "result": "done"})
    await kernel.call_tool(pid, "whoami", {})
    status = await kernel.wait(pid, timeout=1)
    assert status == {"pid": pid, "state": "exited", "reason": "exit 7", "exit_code": 7,
                      "result": "done"}
