"""Red team 41: a flow bound's ask is about the caller's labelled data (approving it
declassifies them, once: every libos surface says "data labelled secret"). The OpenAI Agents
SDK shows its person the call alone, and its adapter took a host tool's flow-bound ask for
the call's own: the person approved `send_email(...)` and declassified the secret the process
had read, never told. Such a request now waits in libos's queue, shown with its labels; and
the request Pydantic AI and LangGraph hand their person (`request_summary`) carries them."""

from __future__ import annotations

from typing import Any

from agents import Agent, set_tracing_disabled
from agents.testing import ScriptedModel, assistant_message, function_call

from broker import AgentImage, host_tool
from broker.adapters.gate import ToolGate, request_summary
from broker.adapters.openai_agents import function_tools
from tests.broker.adapters.conftest import World
from tests.broker.adapters.test_openai_agents import outputs, run_answered

set_tracing_disabled(True)


@host_tool(kind="vault", right="read", labels=["secret"])
def read_secret() -> str:
    """Read the secret."""
    return "s3cret"


async def test_a_flow_bound_ask_is_never_put_to_the_sdks_person(world: World) -> None:
    kernel = world.kernel
    kernel.host_tool(read_secret)
    await kernel.register_image(AgentImage("leaky", tools=("read_secret", "send_email"),
                                           needs=["vault:*:read", "email:*:send"]))
    pid = kernel.spawn("leaky", caps=["vault:*:read", {
        "kind": "email", "scope": "*@example.com", "rights": ["send"],
        "flows": {"secret": "ask"}}])
    model = ScriptedModel([
        [function_call("read_secret", {}, call_id="r")],
        [function_call("send_email", {"to": "bob@example.com", "subject": "s3cret"},
                       call_id="s")],
        [assistant_message("done")]])

    def deny(pending: dict[str, Any]) -> None:  # in libos's queue, not an SDK interruption
        assert pending["labels"] == ["secret"]
        assert request_summary(pending)["labels"] == ["secret"]
        assert world.outbox == []
        kernel.deny(pending["id"], who="cli")

    async with ToolGate.open(kernel, pid, who="openai-agents") as gate:
        result = await run_answered(
            world, Agent(name="a", model=model, tools=function_tools(gate)), deny)
    assert result.interruptions == [] and result.final_output == "done"
    assert outputs(model)["s"]["error"] == "APPROVAL_DENIED"
    assert world.outbox == []
    assert kernel.process(pid).label == {"secret"}
