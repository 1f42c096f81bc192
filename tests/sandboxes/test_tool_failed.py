"""A tool's own failure is `TOOL_FAILED` in every language, and tool code cannot claim a code
that only the broker gives (`CANCELLED`, `PROTOCOL_ERROR`, `SANDBOX_CRASHED`): a TypeScript
throw, a Python raise, a WASM `fail` or error result, and a well-formed error frame written by
a hostile runtime all come out as `ToolFailed`, audited as such; a typed error a tool may give
(`NotFound`) still comes out as itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import AgentImage, Kernel, NotFound, ToolFailed
from broker.errors import BROKER_ONLY
from sandboxes import wasm_guest
from sandboxes.deno import DenoSandbox
from sandboxes.wasm import WasmSandbox
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import LIMITS, NEEDS, agent, register_tool

HOSTILE = Path(__file__).with_name("deno_hostile_runtime.ts")
ECHO = "export default function run(args: unknown) { return args; }"
CLAIMS = sorted(BROKER_ONLY)
NAMES = {"CANCELLED": "Cancelled", "PROTOCOL_ERROR": "ProtocolError",
         "SANDBOX_CRASHED": "SandboxCrashed"}


def _failure(kernel: Kernel, pid: int, tool: str) -> dict[str, object]:
    """The outcome record of the last call of `tool`."""
    calls = [r for r in kernel.audit(pid) if r["syscall"] == "tool.call"
             and r["resource"] == tool and r["phase"] in ("intent", "intent+outcome")]
    if calls[-1]["phase"] == "intent+outcome":  # (a call with no effect: one record)
        return calls[-1]["detail"]
    [outcome] = [r for r in kernel.audit(pid) if r["phase"] == "outcome"
                 and r["detail"].get("intent") == calls[-1]["seq"]]
    return outcome["detail"]


async def _assert_claims_refused(kernel: Kernel, pid: int, lang: str, source: str) -> None:
    """`source` fails with the code in args["code"] (or a plain exception for "plain")."""
    await register_tool(kernel, pid, "claims", source, lang=lang)
    for code in [*CLAIMS, "plain"]:
        with pytest.raises(ToolFailed) as failed:
            await kernel.call_tool(pid, "claims", {"code": code})
        assert type(failed.value) is ToolFailed
        detail = _failure(kernel, pid, "claims")
        assert detail["error"] == "TOOL_FAILED" and detail["ok"] is False
        if code != "plain":
            assert code in failed.value.message
    # The neighbour: a typed error a tool may give is itself.
    with pytest.raises(NotFound, match="gone"):
        await kernel.call_tool(pid, "claims", {"code": "NOT_FOUND"})
    assert _failure(kernel, pid, "claims")["error"] == "NOT_FOUND"


TS_CLAIMS = """
export default async function run(args: { code: string }, libos: any) {
  const classes: Record<string, any> = {
    CANCELLED: libos.Cancelled, PROTOCOL_ERROR: libos.ProtocolError,
    SANDBOX_CRASHED: libos.SandboxCrashed, NOT_FOUND: libos.NotFound };
  if (args.code === "plain") throw new Error("boom");
  throw new classes[args.code]("gone");
}
"""

PY_CLAIMS = """
def run(args, libos):
    classes = {"CANCELLED": libos.Cancelled, "PROTOCOL_ERROR": libos.ProtocolError,
               "SANDBOX_CRASHED": libos.SandboxCrashed, "NOT_FOUND": libos.NotFound}
    if args["code"] == "plain":
        raise ValueError("boom")
    raise classes[args["code"]]("gone")
"""


async def test_typescript_cannot_claim_a_broker_code(dk: Kernel) -> None:
    await _assert_claims_refused(dk, agent(dk), "ts", TS_CLAIMS)


async def test_python_cannot_claim_a_broker_code(pk: Kernel) -> None:
    await _assert_claims_refused(pk, agent(pk), "python", PY_CLAIMS)


def _wat_failing_with(code: str, via_fail: bool) -> str:
    """A WAT tool that ends with `code`: by `libos.fail`, or by returning an error result."""
    end = "(call $fail" if via_fail else "(return (call $ret_error"
    close = ")" if via_fail else "))"
    return wasm_guest.module(f"""
  (data (i32.const 1024) "{code}")
  (data (i32.const 1088) "gone")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    {end} (i32.const 1024) (i32.const {len(code)}) (i32.const 1088) (i32.const 4){close}
    (i64.const 0))""")


@pytest.fixture
async def wk(tmp_path: Path) -> AsyncIterator[Kernel]:
    async with Kernel.open(tmp_path / "libos.db",
                           sandboxes=[WasmSandbox(tmp_path / "wasm-cache")]) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        yield k


@pytest.mark.parametrize("via_fail", [True, False], ids=["fail", "error-result"])
async def test_wasm_cannot_claim_a_broker_code(wk: Kernel, via_fail: bool) -> None:
    pid = agent(wk)
    for code in [*CLAIMS, "NOT_A_CODE"]:
        name = f"w_{code.lower()}"
        await register_tool(wk, pid, name, _wat_failing_with(code, via_fail), lang="wat")
        with pytest.raises(ToolFailed, match=code):
            await wk.call_tool(pid, name, {})
        assert _failure(wk, pid, name)["error"] == "TOOL_FAILED"
    await register_tool(wk, pid, "w_nf", _wat_failing_with("NOT_FOUND", via_fail), lang="wat")
    with pytest.raises(NotFound, match="gone"):
        await wk.call_tool(pid, "w_nf", {})


@pytest.fixture
async def hostile(tmp_path: Path) -> AsyncIterator[tuple[Kernel, DenoSandbox]]:
    async with DenoSandbox(spares=1, runtime=HOSTILE, check_timeout=1.0,
                           memory_mb=LIMITS.memory_mb) as sandbox, \
            Kernel.open(tmp_path / "libos.db", sandboxes=[sandbox], call_limits=LIMITS) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        yield k, sandbox


async def test_a_forged_error_frame_cannot_claim_a_broker_code(
        hostile: tuple[Kernel, DenoSandbox]) -> None:
    """Whatever a runtime does, the broker maps the code when the frame arrives."""
    kernel, _ = hostile
    pid = agent(kernel)
    await register_tool(kernel, pid, "echo", ECHO, lang="ts")
    for code in CLAIMS:
        name = f"claim_{code}"
        await register_tool(kernel, pid, name, ECHO, lang="ts")
        with pytest.raises(ToolFailed, match=rf"claiming '{code}': it was not me"):
            await kernel.call_tool(pid, name, {})
        assert _failure(kernel, pid, name)["error"] == "TOOL_FAILED"
    assert await kernel.call_tool(pid, "echo", {"x": 1}) == {"x": 1}
