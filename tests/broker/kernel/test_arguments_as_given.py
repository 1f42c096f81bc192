"""Arguments as given (issue 12, item 2): on every route a call takes (the host's `call_tool`,
a planner's step, an MCP client's `tools/call`), the approval request a person sees, its
hash, the audit and the arguments the tool runs with are exactly what the caller passed, and
the caller's own dict is never changed. The tool's schema has defaults (top level and nested):
validation never fills them in.

The tool is real TypeScript in Deno: it writes the arguments it was given to a file only an
`ask` capability covers, so the approval request carries them as the tool saw them, and it
returns them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import mcp_types as types
import trio
from mcp import Client

from broker import AgentImage, CallTool, Kernel, ScriptedPlanner
from broker.kernel.approvals import AutoPolicy
from broker.store import SQLiteStore, args_hash
from sandboxes.deno import DenoSandbox
from tests.broker.kernel.test_approvals import _collect, _pending
from tests.conftest import python_server
from tests.sandboxes.conftest import LIMITS, deno  # noqa: F401

ROOT = Path(__file__).resolve().parents[3]
SEEN = "/out/seen.json"
TOOL = {
    "name": "keep_args", "lang": "ts",
    "source": f"""
export default async function run(args: any, libos: any) {{
  await libos.fs.write({SEEN!r}, JSON.stringify(args));
  return args;
}}""",
    "schema": {"type": "object", "properties": {
        "mode": {"type": "string", "default": "fast"},
        "opts": {"type": "object", "properties": {"n": {"type": "integer", "default": 3}},
                 "default": {"n": 3}},
        "tags": {"type": "array", "items": {"type": "string"}, "default": ["a"]}}},
}
ASK_OUT = {"kind": "fs", "scope": "/out/**", "rights": ["write"], "effect": "ask"}
CAPS = ["tool:ts:register", ASK_OUT]
NEEDS = ["tool:ts:register", "fs:/out/**:write"]


def given() -> dict[str, Any]:
    """What the caller passes: every default left out, one nested object left empty."""
    return {"opts": {}, "note": "as given"}


def assert_as_given(records: list[dict[str, Any]], requests: list[dict[str, Any]],
                    args: dict[str, Any], result: Any, fs_root: Path) -> None:
    """The request, its hash, the audit and the executed arguments agree with `args`."""
    [request] = [r for r in requests if r["syscall"] == "fs.write"]
    assert request["args"]["path"] == SEEN
    assert json.loads(request["args"]["data"]) == args  # what the tool saw: no default
    assert request["args_hash"] == args_hash(request["args"])
    [call] = [r for r in records if r["syscall"] == "tool.call" and r["phase"] == "intent"
              and r["resource"] == "keep_args"]
    assert call["detail"]["args"] == {"name": "keep_args", "args": args}
    assert call["args_hash"] == args_hash({"name": "keep_args", "args": args})
    [write] = [r for r in records if r["syscall"] == "fs.write" and r["phase"] == "intent"]
    assert write["args_hash"] == request["args_hash"]  # the approved call is the one run
    assert write["detail"]["approval"] == request["id"]
    assert result == args  # what the tool ran with
    assert json.loads((fs_root / "out" / "seen.json").read_text()) == args


async def open_kernel(tmp_path: Path, sandbox: DenoSandbox, **kwargs: Any) -> Any:
    (tmp_path / "libos-fs" / "out").mkdir(parents=True)
    return Kernel.open(tmp_path / "libos.db", sandboxes=[sandbox], call_limits=LIMITS,
                       **kwargs)


async def test_call_tool(tmp_path: Path, deno: DenoSandbox) -> None:  # noqa: F811
    async with await open_kernel(tmp_path, deno) as kernel:
        await kernel.register_image(AgentImage("a", tools=("register_tool",), needs=NEEDS))
        pid = kernel.spawn("a", caps=CAPS)
        await kernel.call_tool(pid, "register_tool", copy.deepcopy(TOOL))
        args = given()
        opts = args["opts"]
        results: list[Any] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, results, kernel.call_tool(pid, "keep_args", args))
            [request] = await _pending(kernel)
            assert json.loads(request["args"]["data"]) == given()  # shown as given
            kernel.approve(request["id"])
        assert args == given() and args["opts"] is opts and opts == {}  # never changed
        assert_as_given(kernel.audit(pid), kernel.approvals(None), given(), results[0],
                        tmp_path / "libos-fs")
        assert kernel.verify_audit()[1] == []


async def test_a_planners_step(tmp_path: Path, deno: DenoSandbox) -> None:  # noqa: F811
    async with await open_kernel(tmp_path, deno,
                                 approvers=[AutoPolicy(lambda r: "once")]) as kernel:
        await kernel.register_image(AgentImage("a", tools=("register_tool",), needs=NEEDS))
        args = given()
        action = CallTool("keep_args", args)
        pid = kernel.spawn("a", caps=CAPS, planner=ScriptedPlanner([
            CallTool("register_tool", copy.deepcopy(TOOL)), action]))
        status = await kernel.wait(pid, timeout=60)
        assert status["state"] == "exited", status
        assert action.args is args and args == given()  # the planner's own dict: unchanged
        [step] = [o for o in kernel.process(pid).history if o.action.name == "keep_args"]
        assert step.ok and step.action.args == given()
        assert_as_given(kernel.audit(pid), kernel.approvals(None), given(), step.result,
                        tmp_path / "libos-fs")


async def test_an_mcp_clients_call(tmp_path: Path) -> None:
    image = tmp_path / "a.json"
    image.write_text(json.dumps({"name": "a", "tools": ["register_tool"], "needs": NEEDS}))
    (tmp_path / "libos-fs" / "out").mkdir(parents=True)
    server = python_server("-m", "broker.cli", "--db", str(tmp_path / "libos.db"), "mcp", "--image",
                           str(image), "--caps", "tool:ts:register", json.dumps(ASK_OUT))
    shown: list[str] = []

    async def elicit(context: Any, params: Any) -> Any:
        shown.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": "once"})

    args = given()
    with trio.fail_after(180):
        async with Client(server, mode="auto", elicitation_callback=elicit) as client:
            registered = await client.call_tool("register_tool", copy.deepcopy(TOOL))
            assert not registered.is_error, registered
            result = await client.call_tool("keep_args", args)
    assert not result.is_error, result
    assert args == given()
    assert len(shown) == 1 and "as given" in shown[0] and "fast" not in shown[0]
    store = SQLiteStore(tmp_path / "libos.db", writer=False)
    try:
        records = [r.to_json() for r in store.audit_records()]
        from broker.approvals.stored import public

        requests = [public(r) for r in store.list_approvals(None)]
    finally:
        store.close()
    assert_as_given(records, requests, given(), json.loads(result.content[0].text),
                    tmp_path / "libos-fs")
