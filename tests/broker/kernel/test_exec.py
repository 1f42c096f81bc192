"""proc.exec: a process replaces its image. It keeps its pid, lineage, mailbox and Object
Memory; its capabilities narrow to what the new image declares (never widen); its tool table
and its planner come from the new image; the audit names both images; a restart finds it
wholly on the new side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel, NotCapable, NotFound
from tests.conftest import open_image

WIDE_NEEDS = ("fs:/**:read,write", "proc:*:exec,message,spawn", "obj:*:read,write",
              "clock:*:read,sleep")
WIDE_TOOLS = ("read_file", "write_file", "exec", "put_object", "get_object", "spawn", "now",
              "sleep")
NARROW_TOOLS = ("read_file", "receive", "get_object", "whoami", "list_tools")


def fs_root(kernel: Kernel) -> Path:
    return Path(kernel.fs.root)  # type: ignore[attr-defined]


def held(kernel: Kernel, pid: int) -> set[tuple[str, str, tuple[str, ...], Any]]:
    return {(c["kind"], c["scope"], tuple(c["rights"]), c.get("uses"))
            for c in kernel.capabilities(pid)}


async def setup(kernel: Kernel, **narrow: Any) -> int:
    for d in ("public", "private"):
        (fs_root(kernel) / "data" / d).mkdir(parents=True, exist_ok=True)
        (fs_root(kernel) / "data" / d / "f.txt").write_text(d)
    await open_image(kernel, "wide", needs=WIDE_NEEDS, tools=WIDE_TOOLS)
    await open_image(kernel, "narrow", needs=("fs:/data/public/**:read", "proc:*:message"),
                     tools=NARROW_TOOLS, **narrow)
    return kernel.spawn("wide", caps=["fs:/data/**:read,write", "proc:narrow:exec",
                                      "obj:shared:read,write", "proc:wide:spawn"])


async def test_exec_narrows_the_capabilities_and_keeps_the_process(kernel: Kernel) -> None:
    pid = await setup(kernel)
    fs_cap = next(c["id"] for c in kernel.capabilities(pid) if c["kind"] == "fs")
    child = await kernel.call_tool(pid, "spawn", {"image": "wide",
                                                  "caps": ["fs:/data/private/**:read"]})
    await kernel.call_tool(pid, "put_object", {"name": "note", "type": "json", "value": 1})
    kernel.send_message(None, pid, "sent before")

    done = await kernel.call_tool(pid, "exec", {"image": "narrow"})
    assert (done["pid"], done["from"], done["to"]) == (pid, "wide:1", "narrow:1")
    # Narrowed: the file capability to the declared need (derived from the one it narrows;
    # that one stays for lineage, allowing nothing); what the image does not declare is gone.
    assert held(kernel, pid) == {("fs", "/data/public/**", ("read",), None),
                                 ("fs", "/data/**", ("read", "write"), 0),
                                 ("obj", f"proc/{pid}", ("read", "write"), None)}
    narrowed = next(c for c in kernel.capabilities(pid) if c["scope"] == "/data/public/**")
    assert narrowed["parent"] == fs_cap
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", {"path": "/data/private/f.txt"})
    denied = [r for r in kernel.audit(pid) if r["syscall"] == "fs.read" and
              r["phase"] == "denied"]
    assert [r["resource"] for r in denied] == ["/data/private/f.txt"]
    assert await kernel.call_tool(pid, "read_file", {"path": "/data/public/f.txt"}) == "public"

    # The same process: pid, lineage, mailbox, Object Memory.
    me = await kernel.call_tool(pid, "whoami", {})
    assert (me["pid"], me["image"], me["children"]) == (pid, "narrow", [child])
    assert (await kernel.call_tool(pid, "receive", {"timeout": 0}))["body"] == "sent before"
    assert (await kernel.call_tool(pid, "get_object", {"name": "note"}))["value"] == 1
    # The new image's tools, and only those.
    assert {t["name"] for t in kernel.list_tools(pid)} == set(NARROW_TOOLS)
    with pytest.raises(NotFound):
        await kernel.call_tool(pid, "write_file", {"path": "/data/public/x", "data": "x"})
    # The child keeps what it was given.
    assert await kernel.call_tool(child, "read_file", {"path": "/data/private/f.txt"}) == (
        "private")

    # The audit names both images.
    outcome = next(r for r in kernel.audit(pid) if r["syscall"] == "proc.exec"
                   and r["phase"] == "outcome")
    assert outcome["detail"]["ok"] and outcome["resource"] == "narrow"
    assert (outcome["detail"]["result"]["from"], outcome["detail"]["result"]["to"]) == (
        "wide:1", "narrow:1")
    assert kernel.verify_audit()[1] == []
    # Revoking what the host granted still takes back what it was narrowed to.
    kernel.revoke(fs_cap)
    assert {c["kind"] for c in kernel.capabilities(pid)} == {"obj"}
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", {"path": "/data/public/f.txt"})


async def test_exec_never_widens_and_needs_its_capability(kernel: Kernel) -> None:
    pid = await setup(kernel)
    await open_image(kernel, "everything", needs=("fs:/**:read,write", "shell:*:run"),
                     tools=("read_file",))
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "exec", {"image": "everything"})  # no proc:everything:exec
    with pytest.raises(NotFound):
        await kernel.call_tool(pid, "exec", {"image": "narrow", "version": "9"})
    phases = [r["phase"] for r in kernel.audit(pid) if r["syscall"] == "proc.exec"]
    assert phases == ["denied", "rejected"]
    assert kernel.process(pid).image.name == "wide"

    # An image that declares more than the process holds gives it nothing more.
    other = kernel.spawn("wide", caps=["fs:/data/public/**:read", "proc:everything:exec"])
    await kernel.call_tool(other, "exec", {"image": "everything"})
    assert held(kernel, other) == {("fs", "/data/public/**", ("read",), None),
                                   ("obj", f"proc/{other}", ("read", "write"), None)}
    with pytest.raises(NotCapable):
        await kernel.call_tool(other, "read_file", {"path": "/data/private/f.txt"})


async def test_a_counted_capability_moves_never_multiplies(kernel: Kernel) -> None:
    await open_image(kernel, "wide", needs=WIDE_NEEDS, tools=WIDE_TOOLS)
    await open_image(kernel, "two", needs=("fs:/a/**:write", "fs:/b/**:write"),
                     tools=("write_file",))
    pid = kernel.spawn("wide", caps=[{"kind": "fs", "scope": "/**", "rights": ["write"],
                                      "uses": 2}, "proc:two:exec"])
    await kernel.call_tool(pid, "exec", {"image": "two"})
    counted = [c for c in kernel.capabilities(pid) if c["kind"] == "fs"]
    assert sorted(c.get("uses") for c in counted) == [0, 2]  # two uses in all, as before


async def test_a_planner_driven_exec_starts_the_new_images_planner(db_path: Path) -> None:
    async with Kernel.open(db_path) as kernel:
        pid = await setup(kernel, planner={"kind": "scripted", "actions": [
            {"tool": "read_file", "args": {"path": "/data/public/f.txt"}},
            {"tool": "receive", "args": {}},
            {"exit": 0, "result": "narrow done"}]})
        await kernel.register_image(kernel.image("wide").__class__.from_json({
            **kernel.image("wide").to_json(), "version": "2",
            "planner": {"kind": "scripted", "actions": [
                {"tool": "write_file", "args": {"path": "/data/public/w", "data": "w"}},
                {"tool": "exec", "args": {"image": "narrow"}},
                {"tool": "write_file", "args": {"path": "/data/public/never", "data": "x"}}]}}))
        pid = kernel.spawn("wide", caps=["fs:/data/**:read,write", "proc:narrow:exec"])
        with trio.fail_after(10):
            while not kernel.process(pid).history or kernel.process(pid).image.name != "narrow":
                await trio.sleep(0.01)
        # The new planner waits in its second step (receive), its first having read the file.
        with trio.fail_after(10):
            while len(kernel.process(pid).history) < 3:
                await trio.sleep(0.01)
        steps = [o.action.name for o in kernel.process(pid).history]
        assert steps == ["write_file", "exec", "read_file"]
    async with Kernel.open(db_path) as kernel:
        # After a restart it is back on the new side: image, tools, capabilities, planner.
        proc = kernel.process(pid)
        assert proc.image.name == "narrow" and proc.history_from == 2
        assert "write_file" not in proc.tools
        assert ("fs", "/data/public/**", ("read",), None) in held(kernel, pid)
        kernel.send_message(None, pid, "go")
        status = await kernel.wait(pid, timeout=10)
        assert (status["state"], status["result"]) == ("exited", "narrow done")
        assert not (fs_root(kernel) / "data" / "public" / "never").exists()
        assert kernel.verify_audit()[1] == []
