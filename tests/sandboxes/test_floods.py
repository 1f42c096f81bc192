"""Floods from real TypeScript tools (issue 19 items 5 and 7, issue 20 items 3 and 6): every
attempt costs, what one call can start or write is bounded, and the call that floods ends
with `LimitExceeded` while a neighbour process keeps being served."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, CallLimits, Kernel, LimitExceeded
from broker.kernel.image import Budget
from sandboxes.deno import DenoSandbox
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import CAPS, LIMITS, NEEDS, agent
from tests.sandboxes.test_deno import register
from tests.sandboxes.test_deno_attacks import body, meanwhile

DENO_SPARES = 2

# 20,000 attempts that are all refused: unknown names, arguments that fail the schema, and
# reads outside every capability, one after another, each error caught.
REFUSED_FLOOD = body("""
  let refused = 0;
  for (let i = 0; i < 20000; i++) {
    const [name, args] = [["no.such", {}], ["clock.now", {bad: 1}],
                          ["fs.read", {path: "/etc/passwd"}]][i % 3];
    try { await libos.syscall(name, args); } catch (e) { refused++; }
  }
  return refused;""")


@asynccontextmanager
async def open_kernel(tmp_path: Path, deno: DenoSandbox, limits: CallLimits,
                      **options: Any) -> AsyncIterator[Kernel]:
    (tmp_path / "k-fs" / "data").mkdir(parents=True, exist_ok=True)
    async with Kernel.open(tmp_path / "k.db", sandboxes=[deno], call_limits=limits,
                           **options) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        yield k


async def test_refused_syscalls_count_against_the_call(tmp_path: Path,
                                                      deno: DenoSandbox) -> None:
    limits = CallLimits(deadline=30.0, max_syscalls=10, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits) as k:
        pid = agent(k)
        await register(k, pid, "flood", REFUSED_FLOOD)
        before = len(k.audit(pid))
        outcome, served = await meanwhile(k, lambda: k.call_tool(pid, "flood", {}))
        assert isinstance(outcome, LimitExceeded) and "10 syscalls" in outcome.message
        records = k.audit(pid)[before:]
        # tool.call intent + 10 refusals + the one that crossed the cap + tool.call outcome
        assert len(records) == 13
        refusals = records[1:-1]
        assert {r["phase"] for r in refusals[:-1]} == {"denied", "rejected"}
        assert refusals[-1]["phase"] == "rejected"
        assert refusals[-1]["detail"]["error"] == "LIMIT_EXCEEDED"
        assert records[-1]["detail"]["error"] == "LIMIT_EXCEEDED"
        # the process is not harmed beyond that call: its next call works
        assert await k.call_tool(pid, "now", {}) > 0
        assert served > 0


async def test_refused_syscalls_spend_the_process_budget(tmp_path: Path,
                                                        deno: DenoSandbox) -> None:
    limits = CallLimits(deadline=30.0, max_syscalls=10, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits) as k:
        await k.register_image(AgentImage("capped", tools=ALL_BUILTINS, needs=NEEDS,
                                          budget=Budget(syscalls=5)))
        pid = k.spawn("capped", caps=CAPS)
        # registering spends one syscall of the budget (the tool.register)
        await register(k, pid, "flood", REFUSED_FLOOD)
        before = len(k.audit(pid))
        with pytest.raises(LimitExceeded, match="syscalls budget"):
            await k.call_tool(pid, "flood", {})
        assert k.process(pid).state.value == "killed"
        records = k.audit(pid)[before:]
        assert len(records) <= 8
        assert any(r["detail"].get("error") == "LIMIT_EXCEEDED" for r in records)
        neighbour = agent(k)
        assert await k.call_tool(neighbour, "now", {}) > 0


async def test_nested_calls_share_the_callers_syscall_cap(tmp_path: Path,
                                                         deno: DenoSandbox) -> None:
    """Nesting cannot multiply the cap: 20 children each flooding still add up to one cap."""
    limits = CallLimits(deadline=30.0, max_syscalls=50, memory_mb=LIMITS.memory_mb)
    async with open_kernel(tmp_path, deno, limits) as k:
        pid = agent(k)
        await register(k, pid, "flood", REFUSED_FLOOD)
        await register(k, pid, "fan", body("""
  const got = [];
  for (let i = 0; i < 20; i++) {
    try { await libos.tool.call("flood", {}); got.push("ok"); }
    catch (e) { got.push(e.code); }
  }
  return got;"""))
        before = len(k.audit(pid))
        with pytest.raises(LimitExceeded):
            await k.call_tool(pid, "fan", {})
        records = k.audit(pid)[before:]
        # every attempt anywhere in the tree counts against the top call's cap of 50
        assert len(records) <= 2 * limits.max_syscalls + 8
