"""The embedding API behaves as a Python programmer expects (issue 12, item 4): an error raised
inside the `Kernel.open` block comes out as itself, and a sandbox the caller opened stays the
caller's to close."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker import Kernel, NotCapable, SandboxCrashed
from sandboxes.wasm import WasmSandbox
from tests.conftest import open_image
from tests.sandboxes.test_wasm import ECHO, register, start


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
