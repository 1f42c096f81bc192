"""A registered tool's schema is compiled once, when it is registered: its first call checks
its arguments with that very compile, and a replacement's new schema is the one its next call
checks (the compile is kept by the schema object, never by the tool's name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel
from broker.errors import InvalidArgument
from broker.kernel import tools
from broker.schema import Schema, compile_schema
from broker.schema import validator as schema_validator
from sandboxes.wasm import WasmSandbox
from tests.broker.kernel.test_register_commits import TOOL


def _schema(kind: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": {"type": kind}}, "required": ["x"]}


async def test_a_first_call_checks_with_the_registrations_compile_and_a_replacement_with_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[Any] = []

    def counting(schema: Any, what: str = "schema") -> Schema:
        if "x" in schema.get("properties", ()):  # (this tool's: not the builtin's)
            compiled.append(schema)
        return compile_schema(schema, what)

    monkeypatch.setattr(tools, "compile_schema", counting)
    async with Kernel.open(tmp_path / "k.db",
                           sandboxes=[WasmSandbox(tmp_path / "cache")]) as kernel:
        await kernel.register_image(AgentImage("reg", tools=("register_tool",),
                                               needs=("tool:*:register,call",)))
        pid = kernel.spawn("reg", caps=["tool:wat:register"])
        await kernel.call_tool(pid, "register_tool", {
            "name": "t", "lang": "wat", "source": TOOL, "schema": _schema("integer")})
        assert len(compiled) == 1  # at registration
        with pytest.raises(InvalidArgument, match="tool t"):
            await kernel.call_tool(pid, "t", {"x": "text"})
        assert await kernel.call_tool(pid, "t", {"x": 1}) is None
        assert len(compiled) == 1  # the first calls took the registration's compile

        await kernel.call_tool(pid, "register_tool", {
            "name": "t", "lang": "wat", "source": TOOL, "schema": _schema("string"),
            "replace": True})
        with pytest.raises(InvalidArgument, match="tool t"):
            await kernel.call_tool(pid, "t", {"x": 1})  # the old schema's value, refused
        assert await kernel.call_tool(pid, "t", {"x": "text"}) is None
        assert len(compiled) == 2


def test_the_schema_cache_finds_a_schema_by_its_text_short_or_long() -> None:
    """Up to `MAX_TEXT_KEY` characters of canonical text a schema is its own key; a longer one
    is keyed by its hash: either way an equal schema (another object, its keys in another
    order) finds the same compile, and another schema does not."""
    short = {"type": "object", "properties": {"a": {"type": "integer"}}}
    long = {"type": "object", "properties": {
        f"p{i}": {"type": "string", "maxLength": i} for i in range(100)}}
    assert len(schema_validator.canonical(long)) > schema_validator.MAX_TEXT_KEY
    for schema in (short, long):
        first = compile_schema(schema)
        same = compile_schema(dict(reversed(list(schema.items()))))
        assert same is first
        other = compile_schema({**schema, "minProperties": 1})
        assert other is not first
        with pytest.raises(InvalidArgument):
            other.check({}, "value")
        first.check({}, "value")


async def test_a_registrants_dict_changed_after_registration_changes_nothing(
        tmp_path: Path) -> None:
    """Red team 16e: the table entry held the very schema dict its registrant (an embedder, a
    host tool) passed, and the registration's compile is kept by that object: changed after,
    the process's tool list showed the changed schema, and once the compile was let go
    (evicted, an exec) the tool was checked by it, while the store and the record name the
    schema registered."""
    async with Kernel.open(tmp_path / "k.db",
                           sandboxes=[WasmSandbox(tmp_path / "cache")]) as kernel:
        await kernel.register_image(AgentImage("reg", tools=("register_tool",),
                                               needs=("tool:*:register,call",)))
        pid = kernel.spawn("reg", caps=["tool:wat:register"])
        schema = _schema("integer")
        await kernel.call_tool(pid, "register_tool", {
            "name": "t", "lang": "wat", "source": TOOL, "schema": schema})
        schema["properties"]["x"]["type"] = "string"  # the registrant's own dict, loosened
        schema["required"].clear()
        listed = {t["name"]: t["schema"] for t in kernel.list_tools(pid)}
        assert listed["t"] == _schema("integer")
        kernel.tools._validators.clear()  # the registration's compile let go (as evicted)
        kernel.process(pid).plans = None
        with pytest.raises(InvalidArgument, match="tool t"):
            await kernel.call_tool(pid, "t", {"x": "text"})
        with pytest.raises(InvalidArgument, match="tool t"):
            await kernel.call_tool(pid, "t", {})
        assert kernel.store.process_tools(pid)["t"]["schema"] == _schema("integer")
