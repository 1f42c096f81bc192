"""Red team (the channel): what a Deno sandbox writes that its call does not pay for.

Read in the same chunk as the call's result, the start of another frame stayed in the
channel's decoder, where the pool's idle check (which reads the pipe) did not look: the
sandbox served its authority's next call, a neighbour tool's, whose frames the staged bytes
swallowed (it hung to its deadline). They are written after the call's end, as a byte
written while idle is, and kill the sandbox before its next call (`DenoProcess.idle_ok`).

A log frame's level was any text, decoded and dropped (16 characters kept): a frame charged as
an empty line (64 bytes) could carry a level of up to 16 MiB, thousands of them within a
call's output cap. A level is one of `LOG_LEVELS` now, a frame with another a protocol error.
"""

from __future__ import annotations

import pytest

from broker import Kernel, ProtocolError
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import agent, killed_since
from tests.sandboxes.test_deno import ECHO, register
from tests.sandboxes.test_deno_attacks import hostile

__all__ = ["hostile"]  # (the fixture, imported)


async def test_a_frame_begun_with_a_result_kills_the_sandbox_before_its_next_call(
        hostile: tuple[Kernel, DenoSandbox]) -> None:
    """Bytes after a call's last frame, read in the same chunk (the start of another frame),
    were left in the channel's decoder: the sandbox went back to the pool and its next call, a
    neighbour tool's, hung on them to its deadline. They are written after the call's end, as
    a byte written while idle is: the sandbox is killed before its next call."""
    kernel, sandbox = hostile
    pid = agent(kernel)
    for name in ("echo", "forge_partial_after"):
        await register(kernel, pid, name, ECHO)
    assert await kernel.call_tool(pid, "forge_partial_after", {}) == "fine"
    killed = sandbox.stats["killed"]
    assert await kernel.call_tool(pid, "echo", {"z": 3}) == {"z": 3}  # not blamed
    await killed_since(sandbox, killed)


async def test_a_log_frame_of_an_unknown_level_kills_the_sandbox(
        hostile: tuple[Kernel, DenoSandbox]) -> None:
    kernel, sandbox = hostile
    pid = agent(kernel)
    for name in ("echo", "forge_log_level"):
        await register(kernel, pid, name, ECHO)
    killed = sandbox.stats["killed"]
    with pytest.raises(ProtocolError, match="log level"):
        await kernel.call_tool(pid, "forge_log_level", {})
    await killed_since(sandbox, killed)
    ends = [r for r in kernel.audit(pid) if r["syscall"] == "tool.call"
            and r["resource"] == "forge_log_level" and "ok" in r["detail"]]
    assert [r["detail"].get("error") for r in ends] == ["PROTOCOL_ERROR"]
    assert await kernel.call_tool(pid, "echo", {"z": 3}) == {"z": 3}
