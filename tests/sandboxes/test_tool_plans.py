"""A warm call keeps its tool's plan (compiled argument check, parsed manifest and its digest):
whatever changes the tool, its image or the process's authority is seen on the very next call.
Real kernel, real SQLite, real zero-permission Deno."""

from __future__ import annotations

import gc

import pytest
import trio

import broker.kernel.tool_plans as tool_plans
import broker.kernel.tools as tools_module
import broker.schema.validator as validator_module
from broker import AgentImage, Conflict, InvalidArgument, Kernel, NotCapable, NotFound
from broker.schema.validator import Schema
from broker.store.audit import CLOSES
from tests.sandboxes.conftest import CAPS, NEEDS, agent, register_tool

READER = """export default async function run(args: any, libos: any) {
  return [%d, await libos.fs.read(args.path ?? "/data/a/f")];
}"""
N_ONLY = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
          "additionalProperties": False}
PATH_ONLY = {"type": "object", "properties": {"path": {"type": "string"}},
             "required": ["path"], "additionalProperties": False}


async def files(dk: Kernel, pid: int) -> None:
    for d in ("a", "b"):
        await dk.call_tool(pid, "make_dir", {"path": f"/data/{d}"})
        await dk.call_tool(pid, "write_file", {"path": f"/data/{d}/f", "data": d})


async def test_a_replaced_tool_is_checked_and_narrowed_as_the_new_one_on_the_next_call(
        dk: Kernel) -> None:
    pid = agent(dk)
    await files(dk, pid)
    await register_tool(dk, pid, "t", READER % 1, lang="ts", schema=N_ONLY,
                        manifest=["fs:/data/a/**:read"])
    for _ in range(2):  # warm: the second call uses the kept plan
        assert await dk.call_tool(pid, "t", {"n": 1}) == [1, "a"]
    await register_tool(dk, pid, "t", READER % 2, lang="ts", schema=PATH_ONLY,
                        manifest=["fs:/data/b/**:read"], replace=True)
    # The new schema: what the old one took is refused, what it refused is taken.
    with pytest.raises(InvalidArgument):
        await dk.call_tool(pid, "t", {"n": 1})
    # The new manifest: what the old one allowed is refused, what it refused is allowed.
    assert await dk.call_tool(pid, "t", {"path": "/data/b/f"}) == [2, "b"]
    with pytest.raises(NotCapable):
        await dk.call_tool(pid, "t", {"path": "/data/a/f"})


async def test_a_revoked_capability_is_refused_on_the_next_warm_call(dk: Kernel) -> None:
    pid = agent(dk)
    await files(dk, pid)
    await register_tool(dk, pid, "t", READER % 1, lang="ts")
    for _ in range(2):
        assert await dk.call_tool(pid, "t", {}) == [1, "a"]
    fs_cap = next(c["id"] for c in dk.capabilities(pid) if c["kind"] == "fs")
    dk.revoke(fs_cap)
    with pytest.raises(NotCapable):
        await dk.call_tool(pid, "t", {})


async def test_after_exec_the_next_call_is_the_new_images_tool(dk: Kernel) -> None:
    tools = ("make_dir", "write_file", "exec")
    await dk.register_image(AgentImage(
        "one", tools=(*tools, {"name": "t", "lang": "ts", "source": READER % 1,
                               "schema": N_ONLY}),
        needs=(*NEEDS, "proc:*:exec")))
    await dk.register_image(AgentImage(
        "two", tools=({"name": "t", "lang": "ts", "source": READER % 2,
                       "schema": PATH_ONLY, "manifest": ["fs:/data/b/**:read"]},),
        needs=("fs:/data/**:read",)))
    pid = dk.spawn("one", caps=["fs:/data/**:read,write", "proc:two:exec"])
    await files(dk, pid)
    for _ in range(2):
        assert await dk.call_tool(pid, "t", {"n": 1}) == [1, "a"]
    await dk.call_tool(pid, "exec", {"image": "two"})
    with pytest.raises(InvalidArgument):
        await dk.call_tool(pid, "t", {"n": 1})
    assert await dk.call_tool(pid, "t", {"path": "/data/b/f"}) == [2, "b"]
    with pytest.raises(NotCapable):
        await dk.call_tool(pid, "t", {"path": "/data/a/f"})


def live_schemas() -> int:
    """Compiled schemas alive (a compiled schema's module state holds a cycle: collect first)."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Schema))


async def test_plans_keep_no_more_compiled_schemas_than_the_bounded_caches(
        dk: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that registers many tools, each with a schema of its own (each compiles to up
    to 256 KiB of code and 32K RE2 instructions), and calls each once with arguments it
    refuses, must not make the broker keep a compiled schema per tool: without plans the
    compiled schemas kept are bounded by the kernel's caches (`MAX_VALIDATORS`, the schema
    cache), and plans must stay within a bound of their own."""
    monkeypatch.setattr(tools_module, "MAX_VALIDATORS", 2)
    monkeypatch.setattr(validator_module, "CACHE_SIZE", 2)
    monkeypatch.setattr(tool_plans, "MAX_PLANS", 2, raising=False)
    pid = agent(dk)
    many = 16
    for i in range(many):
        await register_tool(dk, pid, f"t{i}", READER % i, lang="ts", schema={
            "type": "object", "properties": {f"p{i}": {"type": "integer"}},
            "required": [f"p{i}"]})
    before = live_schemas()
    with trio.fail_after(60):
        for i in range(many):
            with pytest.raises(InvalidArgument):
                await dk.call_tool(pid, f"t{i}", {f"p{i}": "not an integer"})
    assert live_schemas() - before <= 6  # validators, schema cache, plans: 2 each
    # The neighbour: a warm tool still works, and is still checked by its own schema.
    await files(dk, pid)
    for _ in range(2):
        assert await dk.call_tool(pid, "t0", {"p0": 1}) == [0, "a"]
    with pytest.raises(InvalidArgument):
        await dk.call_tool(pid, "t0", {"p1": 1})


async def test_a_host_tool_replaced_or_removed_by_the_embedder_is_seen_on_the_next_call(
        dk: Kernel) -> None:
    """Host tools are never planned: a replacement's schema, and a removal, are the very next
    call's (the plan kept for a run-time tool beside it changes nothing)."""
    def hello(name: str) -> str:
        return f"hello {name}"

    def other(n: int) -> str:
        return f"number {n}"

    dk.host_tool(hello, name="hello", kind="greet", right="say")
    await dk.register_image(AgentImage("greeter", tools=("hello", "register_tool"),
                                       needs=(*NEEDS, "greet:*:say")))
    pid = dk.spawn("greeter", caps=[*CAPS, "greet:*:say"])
    await register_tool(dk, pid, "t", READER % 1, lang="ts", schema=N_ONLY)
    for _ in range(2):
        assert await dk.call_tool(pid, "hello", {"name": "ann"}) == "hello ann"
        with pytest.raises(InvalidArgument):
            await dk.call_tool(pid, "t", {"n": "x"})
    dk.host_tool(other, name="hello", kind="greet", right="say", replace=True)
    with pytest.raises(InvalidArgument):
        await dk.call_tool(pid, "hello", {"name": "ann"})
    assert await dk.call_tool(pid, "hello", {"n": 2}) == "number 2"
    dk.host_tools.remove("hello")
    with pytest.raises(NotFound):
        await dk.call_tool(pid, "hello", {"n": 2})
    # Nor may a run-time tool take the removed host tool's place in the table.
    with pytest.raises(Conflict):
        await register_tool(dk, pid, "hello", READER % 3, lang="ts")
    assert [r["detail"]["error"] for r in dk.audit(pid)
            if r["syscall"] == "tool.call" and r["phase"] in CLOSES
            and r["resource"] == "hello" and not r["detail"].get("ok")] == [
        "INVALID_ARGUMENT", "NOT_FOUND"]
