"""Red team 43 (sandbox surface): what a registration's check writes on stderr is counted too.

The broker reads every byte of a Deno sandbox's stderr. A call's counts against its output cap
and an idle sandbox's against `STDERR_IDLE_BOUND`, but a check runs as a "call" whose output
cap is 0 (none): nothing counted. And the registration checker imports an image's tool in a
Worker that hid stdout and stdin, not stderr: a real TypeScript tool's top-level loop wrote
3.8 GB there in 2 s, every byte read by the broker's thread, and the image was registered.
Now the Worker hides `Deno.stderr`, and a check's stderr counts against the process's life
bound (a broker that assumes tool code reaches its process's streams however they are hidden:
the hostile runtime writes 4 MiB as it answers a check).
"""

from __future__ import annotations

import pytest

from broker import AgentImage, InvalidArgument, Kernel
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import agent, audit_of
from tests.sandboxes.test_deno import ECHO, register
from tests.sandboxes.test_deno_attacks import hostile

__all__ = ["hostile"]  # (the fixture, imported)

IN_REACH = """
if (typeof (Deno as any).stderr !== "undefined") throw new Error("stderr in reach");
export default async function run() { return "checked"; }
"""


async def test_an_image_tools_check_finds_no_stderr(dk: Kernel) -> None:
    image = await dk.register_image(AgentImage(
        "quiet", tools=({"name": "t", "lang": "ts", "source": IN_REACH},)))
    pid = dk.spawn(image.name)
    assert await dk.call_tool(pid, "t", {}) == "checked"


async def test_a_checks_stderr_is_counted(hostile: tuple[Kernel, DenoSandbox]) -> None:
    kernel, _ = hostile
    pid = agent(kernel)
    with pytest.raises(InvalidArgument, match="stderr"):
        await register(kernel, pid, "forge_stderr_check", ECHO)
    outcomes = [r["detail"] for r in audit_of(kernel, pid, "tool.register")
                if r["phase"] == "outcome"]
    assert [(d["ok"], d.get("error")) for d in outcomes] == [(False, "INVALID_ARGUMENT")]
    assert "forge_stderr_check" not in kernel.process(pid).tools
    # the neighbour: a tool checked after it registers and runs
    await register(kernel, pid, "echo", ECHO)
    assert await kernel.call_tool(pid, "echo", {"a": 1}) == {"a": 1}
