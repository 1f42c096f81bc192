"""What registering a tool commits: its intent (with the held `tool.call` it chains) before
the source reaches the sandbox that checks it, then ONE commit of the source, the tool's row
and both outcomes (tool.register's and the builtin's call), before the answer leaves the
broker. Five commits before: the source and the row each had one, and each outcome."""

from __future__ import annotations

from pathlib import Path

from broker import AgentImage, Kernel
from sandboxes import wasm_guest
from sandboxes.wasm import WasmSandbox
from tests.broker.kernel.test_step_commits import _transactions
from tests.broker.kernel.traced_sql import audit_inserts

TOOL = wasm_guest.tool(
    '(func (export "run") (param $args i32) (param $len i32) (result i64)\n'
    '  (call $ret_begin) (call $mp_nil) (call $ret_end))')


def _written(commit: list[str]) -> list[str]:
    """A commit's writes, an audit row as `phase syscall`, another as its table."""
    out: list[str] = []
    for sql in commit:
        rows = audit_inserts(sql)
        out.extend(rows or [sql.split("(")[0].removeprefix("INSERT INTO ")])
    return out


async def test_a_registration_commits_its_intent_then_everything_else_once(
        tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "k.db",
                           sandboxes=[WasmSandbox(tmp_path / "cache")]) as kernel:
        await kernel.register_image(AgentImage("reg", tools=("register_tool",),
                                               needs=("tool:*:register,call",)))
        pid = kernel.spawn("reg", caps=["tool:wat:register"])
        statements: list[str] = []
        checked: list[list[str]] = []
        prepare = kernel.sandboxes["wasm"].prepare

        async def spying(*args: object, **kwargs: object) -> bytes:
            checked.append(list(statements))  # what was sent when the check began
            return await prepare(*args, **kwargs)  # type: ignore[arg-type]

        kernel.sandboxes["wasm"].prepare = spying  # type: ignore[method-assign]
        kernel.store._db.set_trace_callback(statements.append)  # type: ignore[attr-defined]
        await kernel.call_tool(pid, "register_tool", {"name": "t", "lang": "wat",
                                                      "source": TOOL})
        kernel.store._db.set_trace_callback(None)  # type: ignore[attr-defined]
        commits = [c for c in _transactions(statements) if c]  # (not a poll that read)
        assert [_written(c) for c in commits] == [
            ["intent tool.call", "intent tool.register"],
            ["tool_sources", "process_tools", "outcome tool.register", "outcome tool.call"]]
        # The intent was durable before the source went to the sandbox that checks it.
        assert [_written(c) for c in _transactions(checked[0]) if c] == [
            ["intent tool.call", "intent tool.register"]]
        assert await kernel.call_tool(pid, "t", {}) is None
    async with Kernel.open(tmp_path / "k.db") as kernel:  # registered for good
        assert set(kernel.store.process_tools(pid)) == {"t"}
        assert kernel.verify_audit()[1] == []
