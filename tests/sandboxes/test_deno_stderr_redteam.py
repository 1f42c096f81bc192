"""Red team (sandbox surface): a Deno sandbox's stderr is output the broker reads.

`Deno.stderr` needed no permission and was left in a tool's reach, and the broker drains a
sandbox's stderr (it keeps the tail, to say why a sandbox died): a TypeScript tool wrote 3 GB
there in 1.5 s under a 64 KiB output cap, every byte read by the broker, none counted, and
it could go on writing while its sandbox sat idle. Now the runtime hides `Deno.stderr` as it
hides stdout and stdin, and, since the broker assumes tool code reaches the process's
streams however they are hidden, what it reads of stderr counts: a call's against its output
cap, an idle sandbox's against a bound of its own; past either the sandbox is killed
(`LimitExceeded`, the call's recorded outcome), and other processes' calls go on.
"""

from __future__ import annotations

import pytest
import trio

from broker import Kernel, LimitExceeded
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import agent, killed_since
from tests.sandboxes.test_deno import ECHO, register, tool
from tests.sandboxes.test_deno_attacks import body, hostile, refused_beside_a_neighbour

__all__ = ["hostile"]  # (the fixture, imported)

DENO_SPARES = 2


async def test_a_tool_finds_no_stderr(dk: Kernel) -> None:
    pid = agent(dk)
    got = await tool(dk, pid, body("return typeof (Deno as any).stderr;"))
    assert got == "undefined"
    # console still writes log frames
    assert await tool(dk, pid, body("console.error('still a log'); return 1;"), name="u") == 1


@pytest.mark.slow_ok
async def test_a_calls_stderr_counts_as_its_output(hostile: tuple[Kernel, DenoSandbox]) -> None:
    kernel, _ = hostile
    pid = agent(kernel)
    for name in ("echo", "forge_stderr_flood"):
        await register(kernel, pid, name, ECHO)
    await refused_beside_a_neighbour(kernel, pid, "forge_stderr_flood", LimitExceeded, "stderr")
    assert await kernel.call_tool(pid, "echo", {"a": 1}) == {"a": 1}


async def test_an_idle_sandbox_flooding_stderr_is_killed(
        hostile: tuple[Kernel, DenoSandbox]) -> None:
    kernel, sandbox = hostile
    pid = agent(kernel)
    for name in ("echo", "forge_stderr_idle"):
        await register(kernel, pid, name, ECHO)
    killed = sandbox.stats["killed"]
    assert await kernel.call_tool(pid, "forge_stderr_idle", {}) == "fine"
    await killed_since(sandbox, killed)  # idle: no call of its authority needed to find it
    await trio.sleep(0)
    assert await kernel.call_tool(pid, "echo", {"z": 3}) == {"z": 3}

