"""Red team 6: a JSON Schema the embedder hands in (a host tool's, an object type's) holding
a lone surrogate. `schema.validator.canonical` measured the schema's canonical JSON with
`text.encode()`, which raised an untyped UnicodeEncodeError out of `Kernel.host_tool` and
`Kernel.define_type` (a host tool's refusal record was not written either). Severity: low
(the embedder's own values; an MCP server's and a process's schemas reach the broker as
JSON or msgpack, which hold no lone surrogate). Now `InvalidArgument`."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import InvalidArgument, Kernel

SCHEMA = {"type": "object", "properties": {"a": {"type": "string", "pattern": "x\ud800"}}}


def echo(a: str = "") -> str:
    return a


async def test_a_schema_with_a_lone_surrogate_is_refused_typed(tmp_path: Path) -> None:
    async with Kernel.open(tmp_path / "db") as kernel:
        with pytest.raises(InvalidArgument, match="not Unicode"):
            kernel.host_tool(echo, name="echo", kind="thing", right="use", schema=SCHEMA)
        last = kernel.audit()[-1]
        assert last["phase"] == "rejected" and "not Unicode" in last["detail"]["message"]
        with pytest.raises(InvalidArgument, match="not Unicode"):
            kernel.define_type("t", SCHEMA)
        # The neighbours: the same schemas without it are taken.
        plain = {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}}
        kernel.host_tool(echo, name="echo", kind="thing", right="use", schema=plain)
        kernel.define_type("t", plain)
        assert kernel.verify_audit()[1] == []
