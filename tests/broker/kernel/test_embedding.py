"""The embedding API behaves as a Python programmer expects (issue 12, item 4): an error raised
inside the `Kernel.open` block comes out as itself; a sandbox the caller opened stays the
caller's to close; the host seeds and reads objects and files; a host-driven process exits
with a status; a deny rule needs no declared need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Conflict, InvalidArgument, Kernel, NotCapable, SandboxCrashed
from sandboxes.wasm import WasmSandbox
from tests.conftest import open_image
from tests.sandboxes.test_wasm import ECHO, register, start

NOTE = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


class Boom(Exception):
    pass


async def test_a_typed_error_in_the_block_comes_out_as_itself(db_path: Path) -> None:
    with pytest.raises(NotCapable) as caught:
        async with Kernel.open(db_path) as kernel:
            await open_image(kernel)
            pid = kernel.spawn("agent", caps=["fs:/a/**:read"])
            await kernel.call_tool(pid, "read_file", {"path": "/etc/passwd"})
    assert type(caught.value) is NotCapable  # not an ExceptionGroup around it
    # `except NotCapable` around the block matches, as a Python programmer writes it.
    try:
        async with Kernel.open(db_path) as kernel:
            await kernel.call_tool(pid, "read_file", {"path": "/etc/shadow"})
    except NotCapable as exc:
        assert "/etc/shadow" in exc.message
    else:
        raise AssertionError("the denial did not come out")
    # The kernel closed as it always does: the store reopens and its chain verifies.
    async with Kernel.open(db_path) as kernel:
        assert kernel.verify_audit()[1] == []
        assert [r["resource"] for r in kernel.audit(pid) if r["phase"] == "denied"] == [
            "/etc/passwd", "/etc/shadow"]


async def test_any_exception_and_a_cancellation_come_out_as_themselves(db_path: Path) -> None:
    with pytest.raises(Boom):
        async with Kernel.open(db_path) as kernel:
            await open_image(kernel)
            kernel.spawn("agent", caps=["fs:/a/**:read"])
            raise Boom("the host's own bug")
    with pytest.raises(KeyboardInterrupt):
        async with Kernel.open(db_path):
            raise KeyboardInterrupt
    # A deadline around the block cancels it and is absorbed by its own scope, as in trio.
    with trio.move_on_after(0.2) as scope:
        async with Kernel.open(db_path):
            await trio.sleep(30)
    assert scope.cancelled_caught
    async with Kernel.open(db_path) as kernel:
        assert kernel.verify_audit()[1] == []


async def test_a_sandbox_the_caller_opened_stays_open_for_the_next_kernel(
        tmp_path: Path) -> None:
    async with WasmSandbox(tmp_path / "cache") as wasm:
        async with Kernel.open(tmp_path / "a.db", sandboxes=[wasm]) as kernel:
            pid = await start(kernel)
            await register(kernel, pid, "echo", ECHO)
            assert await kernel.call_tool(pid, "echo", {"n": 1}) == {"n": 1}
        assert wasm.entered
        # The same sandbox serves a second kernel: the first did not close it.
        async with Kernel.open(tmp_path / "b.db", sandboxes=[wasm]) as kernel:
            pid = await start(kernel)
            await register(kernel, pid, "echo", ECHO)
            assert await kernel.call_tool(pid, "echo", {"n": 2}) == {"n": 2}
    assert not wasm.entered


async def test_a_sandbox_handed_in_unentered_is_closed_by_the_kernel(tmp_path: Path) -> None:
    wasm = WasmSandbox(tmp_path / "cache")
    async with Kernel.open(tmp_path / "a.db", sandboxes=[wasm]) as kernel:
        pid = await start(kernel)
        await register(kernel, pid, "echo", ECHO)
        assert await kernel.call_tool(pid, "echo", {"n": 1}) == {"n": 1}
    async with Kernel.open(tmp_path / "a.db", sandboxes=[wasm]) as kernel:
        with pytest.raises(SandboxCrashed, match="closed"):
            await kernel.call_tool(pid, "echo", {"n": 2})


# -- the host's objects and files, and a host-driven process's exit ----------------------------

async def test_the_host_seeds_and_reads_what_processes_see(kernel: Kernel) -> None:
    await open_image(kernel, types={"note": NOTE})
    pid = kernel.spawn("agent", caps=["fs:/data/**:read,write", "obj:shared:read"])
    # Seeded by the host, read by the process through its own checked syscalls.
    kernel.write_file("/data/in/brief.txt", "three words here", parents=True)
    kernel.put_object("brief", {"text": "hi"}, ns="shared", type="note")
    kernel.put_object("mine", [1, 2], ns=f"proc/{pid}")
    assert await kernel.call_tool(pid, "read_file", {"path": "/data/in/brief.txt"}) == (
        "three words here")
    got = await kernel.call_tool(pid, "get_object", {"name": "brief", "ns": "shared"})
    assert got["value"] == {"text": "hi"} and got["type"] == "note"
    assert (await kernel.call_tool(pid, "get_object", {"name": "mine"}))["value"] == [1, 2]
    # Written by the process, read by the host.
    await kernel.call_tool(pid, "write_file", {"path": "/data/out.bin", "data": b"\x00\xff"})
    await kernel.call_tool(pid, "put_object", {"name": "answer", "type": "json",
                                               "value": {"n": 42}})
    assert kernel.read_file("/data/out.bin", binary=True) == b"\x00\xff"
    with pytest.raises(InvalidArgument, match="UTF-8"):
        kernel.read_file("/data/out.bin")
    assert kernel.get_object("answer", ns=f"proc/{pid}")["value"] == {"n": 42}
    # Versions, an expected version, an object's type, appending.
    assert kernel.put_object("brief", {"text": "v2"}, ns="shared", type="note",
                             expect_version=1)["version"] == 2
    with pytest.raises(Conflict):
        kernel.put_object("brief", {"text": "v3"}, ns="shared", type="note", expect_version=1)
    with pytest.raises(InvalidArgument):
        kernel.put_object("brief", {"text": 3}, ns="shared", type="note")
    assert kernel.get_object("brief", ns="shared", version=1)["value"] == {"text": "hi"}
    assert kernel.write_file("/data/in/brief.txt", " and more", append=True) == 9
    assert kernel.read_file("/data/in/brief.txt") == "three words here and more"
    # The host's file API is no way around the fs root: a link out is refused.
    Path(kernel.fs.root, "data", "etc").symlink_to("/etc")  # type: ignore[attr-defined]
    with pytest.raises(NotCapable):
        kernel.read_file("/data/etc/hostname")
    assert kernel.verify_audit()[1] == []


async def test_a_host_driven_process_exits_with_a_status(kernel: Kernel) -> None:
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["fs:/data/**:read,write"])
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", {"path": "/etc/passwd"})
    async with trio.open_nursery() as nursery:
        waited: list[dict[str, Any]] = []

        async def wait() -> None:
            waited.append(await kernel.wait(pid))

        nursery.start_soon(wait)
        await trio.sleep(0.01)
        assert kernel.exit(pid, 2, {"summary": "gave up"})["state"] == "exited"
    assert waited == [{"pid": pid, "state": "exited", "reason": "exit 2", "exit_code": 2,
                       "result": {"summary": "gave up"}}]
    [row] = [p for p in kernel.ps() if p["pid"] == pid]
    assert row["state"] == "exited" and row["exit_code"] == 2
    with pytest.raises(Conflict):
        await kernel.call_tool(pid, "read_file", {"path": "/data/x"})


# -- deny rules need no declared need ------------------------------------------------------------

async def test_a_deny_rule_needs_no_declared_need(kernel: Kernel) -> None:
    await open_image(kernel, needs=("fs:/data/**:read,write", "proc:*:spawn"))
    deny_all_writes = {"kind": "fs", "scope": "/**", "rights": ["write"], "effect": "deny"}
    pid = kernel.spawn("agent", caps=["fs:/data/**:read,write", "proc:*:spawn",
                                      deny_all_writes, {"kind": "net", "scope": "*",
                                                        "rights": ["fetch"], "effect": "deny"}])
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "write_file", {"path": "/data/a.txt", "data": "x"})
    # An allow beyond the image's needs is still escalation.
    with pytest.raises(NotCapable, match="does not declare"):
        kernel.spawn("agent", caps=["fs:/etc/**:read"])
    # A child may be given a deny rule its parent does not hold (it narrows), never an allow.
    child = await kernel.call_tool(pid, "spawn", {"image": "agent", "caps": [
        "fs:/data/**:read", {"kind": "fs", "scope": "/data/secret/**", "rights": ["read"],
                             "effect": "deny"}]})
    kernel.write_file("/data/secret/key", "k", parents=True)
    kernel.write_file("/data/open.txt", "o")
    assert await kernel.call_tool(child, "read_file", {"path": "/data/open.txt"}) == "o"
    with pytest.raises(NotCapable):
        await kernel.call_tool(child, "read_file", {"path": "/data/secret/key"})
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "spawn", {"image": "agent", "caps": ["fs:/etc/**:read"]})


async def test_the_hosts_files_never_go_through_a_hard_link(kernel: Kernel,
                                                            tmp_path: Path) -> None:
    """A process with a shell could plant a hard link to a file outside the tree: the host's
    write_file and read_file refuse a file with another name (Conflict), it stays untouched,
    the refusal is recorded, and a plain file beside it is still the host's to use."""
    outside = tmp_path / "not-ours.txt"
    outside.write_text("someone else's")
    data = Path(kernel.fs.root, "data")  # type: ignore[attr-defined]
    data.mkdir(parents=True, exist_ok=True)
    (data / "report.txt").hardlink_to(outside)
    with pytest.raises(Conflict, match="hard link"):
        kernel.write_file("/data/report.txt", "overwritten")
    with pytest.raises(Conflict, match="hard link"):
        kernel.read_file("/data/report.txt")
    assert outside.read_text() == "someone else's"
    refused = [r for r in kernel.audit() if r["phase"] == "rejected"
               and r["syscall"] in ("host.fs.write", "host.fs.read")]
    assert [r["syscall"] for r in refused] == ["host.fs.write", "host.fs.read"]
    assert kernel.write_file("/data/plain.txt", "mine") == 4
    assert kernel.read_file("/data/plain.txt") == "mine"


@pytest.mark.parametrize("args", [{"path": "/a/\ud800", "data": "x"},
                                  {"path": "/a/b", "data": "half a pair \udfff"},
                                  {"\ud83d": "a key"}], ids=["path", "data", "key"])
async def test_text_that_is_not_unicode_is_refused_and_recorded(kernel: Kernel,
                                                                args: dict[str, Any]) -> None:
    """A lone surrogate (host code can hold one; a model's JSON can escape one) cannot be
    hashed, stored or written: an `InvalidArgument`, recorded with U+FFFD in its place."""
    await open_image(kernel)
    pid = kernel.spawn("agent", caps=["fs:/a/**:read,write"])
    with pytest.raises(InvalidArgument, match="not Unicode"):
        await kernel.call_tool(pid, "write_file", args)
    [record] = [r for r in kernel.audit(pid) if r["phase"] == "rejected"]
    assert record["detail"]["error"] == "INVALID_ARGUMENT"
    assert "\ufffd" in str(record["detail"]["args"])
    await kernel.call_tool(pid, "make_dir", {"path": "/a"})  # the process goes on
    await kernel.call_tool(pid, "write_file", {"path": "/a/b", "data": "fine \ufffd"})
    assert kernel.verify_audit()[1] == []
