"""Red team 10 (on lane loose's f36ff6c): `proc.wait` now records the failure a sandboxed
tool gets for a child's end its channel cannot carry, but `proc.receive` and
`proc.wait_event` take their message or event the same way (it is gone from the mailbox,
or seen) and were still recorded `ok`, body and all, while the tool got `InvalidArgument`.

Severity: medium. Who gains: any sender with `proc:<pid>:message` on the receiver whose
body is not framed by a sandbox (a model planner's `send`: its arguments nest up to 512
levels; a sandbox's frame holds 32). The chain then says the receiver's tool was handed a
body it never saw (an instruction, a warning: "it was told"), and the message is gone. Now
both record the failure the tool sees, as `proc.wait` does; a message that fits is
delivered and recorded as before. Real TypeScript in Deno.

Then (lane heldbits): the refused message was still taken, never delivered (invariant 7:
nothing acknowledged is lost), and the event seen. Now each goes back: first in line, so
one such message blocked every later receive of the tool; now (lane mailhead) set aside, so
the tool's next receive or wait goes on past it (`tests/sandboxes/test_receive_set_aside.py`),
and the planner's (in the broker) gets it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker import AgentImage
from broker.protocol.limits import DEFAULT_LIMITS
from sandboxes.deno import DenoSandbox
from tests.broker.syscalls.test_proc_wait_unsendable import _nested
from tests.sandboxes.conftest import SLOW_OK, deno, kernel_over  # noqa: F401

CAPS = ("tool:ts:register", "proc:*:message")
TOOL = {"name": "take", "lang": "ts", "schema": {"type": "object"}, "source": """
export default async function run(args: any, libos: any) {
  try {
    const got = args.event ? await libos.proc.wait_event("e", 5) : await libos.proc.receive(5);
    return {ok: got};
  } catch (e: any) { return {error: e.code}; }
}"""}


def _outcomes(kernel: Any, pid: int, syscall: str) -> list[dict[str, Any]]:
    return [r["detail"] for r in kernel.audit(pid)
            if r["syscall"] == syscall and "ok" in r["detail"]]


async def test_a_message_a_tool_cannot_be_sent_is_the_receives_recorded_failure(
        tmp_path: Path, deno: DenoSandbox) -> None:  # noqa: F811
    async with kernel_over(tmp_path, deno, SLOW_OK) as kernel:
        await kernel.register_image(AgentImage("mail", tools=(
            "register_tool", "send", "raise_event", "receive", "wait_event"), needs=CAPS))
        victim = kernel.spawn("mail", caps=CAPS)
        sender = kernel.spawn("mail", caps=CAPS)
        await kernel.call_tool(victim, "register_tool", TOOL)
        deep = _nested(DEFAULT_LIMITS.max_depth + 8)
        # The sender's planner's `send` (in the broker: no frame bounds its body).
        await kernel.call_tool(sender, "send", {"pid": victim, "body": deep})
        assert await kernel.call_tool(victim, "take", {}) == {"error": "INVALID_ARGUMENT"}
        [refused] = _outcomes(kernel, victim, "proc.receive")
        assert (refused["ok"], refused.get("error")) == (False, "INVALID_ARGUMENT"), refused
        assert "result" not in refused  # (it recorded the body the tool never got)
        # The message stays, set aside: the host sees it, and the tool is handed the next.
        assert kernel.store.mailbox_size(victim) == 1
        [aside] = kernel.messages_set_aside(victim)
        assert aside["set_aside_by"] == refused["intent"] and refused["set_aside"] == aside["id"]
        await kernel.call_tool(sender, "send", {"pid": victim, "body": {"v": _nested(3)}})
        got = await kernel.call_tool(victim, "take", {})
        assert got["ok"]["body"] == {"v": _nested(3)}
        # The planner's receive (in the broker: no frame) takes it, whole.
        got = await kernel.call_tool(victim, "receive", {"timeout": 1})
        assert got["body"] == deep and kernel.messages_set_aside(victim) == []
        # The same for an event the tool could not be sent: set aside, unseen by the planner;
        # the tool's next wait is handed the event raised after it (it was refused it for ever).
        await kernel.call_tool(sender, "raise_event", {"name": "e", "data": deep})
        assert await kernel.call_tool(victim, "take", {"event": True}) == {
            "error": "INVALID_ARGUMENT"}
        [event] = _outcomes(kernel, victim, "proc.wait_event")
        assert (event["ok"], event.get("error")) == (False, "INVALID_ARGUMENT"), event
        await kernel.call_tool(sender, "raise_event", {"name": "e", "data": "after it"})
        got = await kernel.call_tool(victim, "take", {"event": True})
        assert got["ok"]["data"] == "after it"
        [aside] = kernel.events_set_aside(victim)
        assert (aside["id"], aside["set_aside_by"]) == (event["set_aside"], event["intent"])
        seen = await kernel.call_tool(victim, "wait_event", {"name": "e", "timeout": 1})
        assert seen is not None and seen["data"] == deep
        assert kernel.events_set_aside(victim) == []
        assert [o["ok"] for o in _outcomes(kernel, victim, "proc.receive")] == [
            False, True, True]
        assert kernel.verify_audit()[1] == []
