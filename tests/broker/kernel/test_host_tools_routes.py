"""Every route to a host tool takes the same checks: a planner, a sandboxed TypeScript tool's
`tool.call` (real Deno), and an MCP client (the SDK's own, over stdio, against an embedder's
server). No raw syscall reaches one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from broker import AgentImage, CallLimits, CallTool, Conflict, Kernel, NotCapable, ScriptedPlanner
from broker.store import SQLiteStore
from sandboxes.deno import DenoSandbox
from tests.broker.kernel.host_fixtures import Outbox, count_mail, email_calls, send_email
from tests.conftest import python_server

ROOT = Path(__file__).resolve().parents[3]
MAIL = {"to": "bob@example.com", "subject": "hi"}
EVE = {"to": "eve@evil.com", "subject": "hi"}

CALLER = """
export default async function run(args: any, libos: any) {
  const out: Record<string, unknown> = {};
  out.sent = await libos.tool.call("send_email", { to: "bob@example.com", subject: "from ts" });
  for (const [key, call] of [
    ["denied", () => libos.tool.call("send_email", { to: "eve@evil.com", subject: "x" })],
    ["raw", () => libos.syscall("host.send_email", { to: "bob@example.com", subject: "raw" })],
    ["bare", () => libos.syscall("send_email", { to: "bob@example.com", subject: "raw" })],
  ] as const) {
    try { out[key] = await call(); } catch (e) { out[key] = (e as { code: string }).code; }
  }
  return out;
}
"""


@asynccontextmanager
async def mail_kernel(tmp_path: Path, outbox: Outbox) -> AsyncIterator[Kernel]:
    async with DenoSandbox(spares=1, memory_mb=96, check_timeout=10.0) as deno, Kernel.open(
            tmp_path / "libos.db", sandboxes=[deno], host_tools=[send_email, count_mail],
            host_state=outbox, call_limits=CallLimits(deadline=30.0)) as kernel:
        await kernel.register_image(AgentImage(
            "mailer", tools=("send_email", "count_mail", "register_tool"),
            needs=["email:*:send,read", "tool:*:register,call"]))
        yield kernel


async def test_a_planners_call_is_checked_like_any_other(tmp_path: Path) -> None:
    outbox = Outbox()
    async with Kernel.open(tmp_path / "libos.db", host_tools=[send_email],
                           host_state=outbox) as kernel:
        await kernel.register_image(AgentImage("mailer", tools=("send_email",),
                                               needs=["email:*:send"]))
        pid = kernel.spawn("mailer", caps=["email:*@example.com:send"], planner=ScriptedPlanner(
            [CallTool("send_email", MAIL), CallTool("send_email", EVE)]))
        assert (await kernel.wait(pid, timeout=10))["state"] == "exited"
        sent, denied = kernel.process(pid).history
        assert sent.result == {"sent": 1, "to": "bob@example.com"}
        assert denied.error is not None and denied.error["code"] == "NOT_CAPABLE"
        assert [r["phase"] for r in email_calls(kernel, pid)] == ["intent", "outcome", "denied"]
        assert [m["to"] for m in outbox.sent] == ["bob@example.com"]


async def test_a_sandboxed_tool_reaches_it_only_through_tool_call(tmp_path: Path) -> None:
    outbox = Outbox()
    async with mail_kernel(tmp_path, outbox) as kernel:
        pid = kernel.spawn("mailer", caps=["email:*@example.com:send", "tool:ts:register"])
        await kernel.call_tool(pid, "register_tool", {"name": "caller", "lang": "ts",
                                                      "source": CALLER})
        out = await kernel.call_tool(pid, "caller", {})
        assert out == {"sent": {"sent": 1, "to": "bob@example.com"}, "denied": "NOT_CAPABLE",
                       "raw": "NOT_CAPABLE", "bare": "NOT_CAPABLE"}
        assert [m["subject"] for m in outbox.sent] == ["from ts"]
        [inv] = [r["seq"] for r in kernel.audit(pid) if r["syscall"] == "tool.call"
                 and r["phase"] == "intent" and r["resource"] == "caller"]
        records = [r for r in kernel.audit(pid) if r["seq"] > inv]
        unknown = [r["detail"]["name"] for r in records if r["syscall"] == "unknown"]
        assert unknown == ["host.send_email", "send_email"]
        phases = [r["phase"] for r in records if r["syscall"] == "host.send_email"]
        assert phases == ["intent", "outcome", "denied"]
        # A JIT tool cannot take a host tool's name in the process's table.
        with pytest.raises(Conflict, match="host tool"):
            await kernel.call_tool(pid, "register_tool", {"name": "send_email", "lang": "ts",
                                                          "source": CALLER})


async def test_a_callers_manifest_narrows_it(tmp_path: Path) -> None:
    outbox = Outbox()
    async with mail_kernel(tmp_path, outbox) as kernel:
        pid = kernel.spawn("mailer", caps=["email:*:send", "tool:ts:register", "tool:*:call"])
        await kernel.call_tool(pid, "register_tool", {
            "name": "narrow", "lang": "ts", "source": CALLER,
            "manifest": ["tool:send_email:call", "email:*@example.com:send"]})
        await kernel.call_tool(pid, "register_tool", {
            "name": "no_mail", "lang": "ts", "source": CALLER,
            "manifest": ["tool:send_email:call"]})
        narrow = await kernel.call_tool(pid, "narrow", {})
        assert narrow["sent"] == {"sent": 1, "to": "bob@example.com"}
        assert narrow["denied"] == "NOT_CAPABLE"  # eve@evil.com: outside the manifest
        with pytest.raises(NotCapable, match="outside the tool's manifest"):
            await kernel.call_tool(pid, "no_mail", {})
        assert len(outbox.sent) == 1


async def test_an_mcp_client_calls_it_with_the_same_checks(tmp_path: Path) -> None:
    db, outbox = tmp_path / "libos.db", tmp_path / "outbox.jsonl"
    params = python_server("-m", "tests.broker.kernel.host_mcp_server", str(db), str(outbox))
    asked: list[str] = []

    async def elicit(context: Any, params: Any) -> Any:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "once"})

    async with Client(params, mode="legacy", elicitation_callback=elicit) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert set(listed) == {"send_email"}
        assert listed["send_email"].input_schema["required"] == ["to", "subject"]
        sent = await client.call_tool("send_email", MAIL)
        assert not sent.is_error and json.loads(sent.content[0].text) == {"sent": MAIL["to"]}
        denied = await client.call_tool("send_email", EVE)
        assert denied.is_error
        assert json.loads(denied.content[0].text)["error"] == "NOT_CAPABLE"
        partner = await client.call_tool("send_email", {"to": "ann@partner.com",
                                                        "subject": "deal"})
        assert not partner.is_error  # asked, shown the exact arguments, approved once
    assert len(asked) == 1 and "ann@partner.com" in asked[0] and "deal" in asked[0]
    lines = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [m["to"] for m in lines] == ["bob@example.com", "ann@partner.com"]
    store = SQLiteStore(db)
    try:
        records = [s.record for s in store.audit_records()
                   if s.record.syscall == "host.send_email"]
        assert [(r.phase, r.resource) for r in records] == [
            ("intent", "bob@example.com"), ("outcome", "bob@example.com"),
            ("denied", "eve@evil.com"), ("ask", "ann@partner.com"),
            ("intent", "ann@partner.com"), ("outcome", "ann@partner.com")]
        assert store.audit_problems()[1] == []
    finally:
        store.close()
