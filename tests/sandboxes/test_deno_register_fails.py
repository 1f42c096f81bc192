"""A TypeScript tool's registration whose commit fails is taken back, and so is the sandbox its
check left the tool loaded in (it would wait, bound to the tool's authority, for a first call
that never comes). Both ways a tool is registered: the planner's `register_tool` builtin (its
rows committed with the builtin's outcome), and a tool's own `tool.register` syscall (with
that syscall's outcome). Real Deno, a real SQLite store refusing `process_tools` inserts
(`tests/broker/kernel/faulty_store.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Conflict, Kernel, NotFound
from sandboxes.deno import DenoSandbox
from tests.broker.kernel.faulty_store import Fault
from tests.sandboxes.conftest import agent, audit_of, kernel_over
from tests.sandboxes.test_deno import ECHO, register

REGISTRAR = """export default async function run(args: any, libos: any) {
  try { return await libos.tool.register("planted", "ts", args.source); }
  catch (e: any) { return `${e.code}: ${e.message}`; }
}"""
PLANTED = "export default async function run() { return 'planted ran'; }"


def _loading(deno: DenoSandbox, name: str) -> list[object]:
    """Idle sandboxes with the tool `name` loaded."""
    return [sb for sbs in deno.pool.idle.values() for sb in sbs if name in sb.loaded]


async def test_a_failed_registration_by_the_builtin_keeps_no_sandbox_loaded_with_it(
        dk: Kernel, deno: DenoSandbox, tmp_path: Path) -> None:
    pid = agent(dk)
    await register(dk, pid, "echo", ECHO)
    with Fault(tmp_path / "libos.db") as fault:
        fault.install("process_tools")
        fault.set(True)
        with pytest.raises(Conflict, match="'planted' is not registered"):
            await register(dk, pid, "planted", PLANTED)
        fault.set(False)
    assert _loading(deno, "planted") == []
    with pytest.raises(NotFound):
        await dk.call_tool(pid, "planted", {})
    assert await dk.call_tool(pid, "echo", {"a": 1}) == {"a": 1}  # the neighbour


async def test_a_failed_registration_by_a_tool_is_taken_back_and_its_tool_told(
        deno: DenoSandbox, tmp_path: Path) -> None:
    async with kernel_over(tmp_path, deno) as dk:
        pid = agent(dk)
        await register(dk, pid, "registrar", REGISTRAR, manifest=["tool:ts:register"])
        with Fault(tmp_path / "libos.db") as fault:
            fault.install("process_tools")
            fault.set(True)
            told = await dk.call_tool(pid, "registrar", {"source": PLANTED})
            fault.set(False)
        assert told.startswith("CONFLICT") and "'planted' is not registered" in told
        assert _loading(deno, "planted") == []
        with pytest.raises(NotFound):
            await dk.call_tool(pid, "planted", {})
        outcomes = [r for r in audit_of(dk, pid, "tool.register") if r["phase"] == "outcome"]
        assert outcomes[-1]["detail"]["taken_back"] is True
        # the neighbour: the registrar registers it once the store takes the row
        assert (await dk.call_tool(pid, "registrar", {"source": PLANTED}))["name"] == "planted"
        assert await dk.call_tool(pid, "planted", {}) == "planted ran"
    async with Kernel.open(tmp_path / "libos.db", fs_root=tmp_path / "libos-fs") as again:
        assert set(again.store.process_tools(pid)) == {"registrar", "planted"}
        assert again.verify_audit()[1] == []
