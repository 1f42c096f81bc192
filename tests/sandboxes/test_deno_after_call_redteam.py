"""Red team (the channel): bytes a Deno sandbox writes after its call's last frame.

Read in the same chunk as the call's result, the start of another frame stayed in the
channel's decoder, where the pool's idle check (which reads the pipe) did not look: the
sandbox served its authority's next call, a neighbour tool's, whose frames the staged bytes
swallowed (it hung to its deadline). They are written after the call's end, as a byte
written while idle is, and kill the sandbox before its next call (`DenoProcess.idle_ok`).
"""

from __future__ import annotations

from broker import Kernel
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
