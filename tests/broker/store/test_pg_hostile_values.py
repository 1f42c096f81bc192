"""Hostile strings, bytes and numbers through a real kernel on PostgreSQL, whose write
transactions are bound on the broker's side (psycopg's quoting) and sent as one query: each
value is stored and read back as given, or refused with a typed error that wrote nothing; the
chain verifies and the broker goes on (no value can end the statement it is in)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker import Kernel, LibosError
from sandboxes.deno import DenoSandbox
from tests.sandboxes.conftest import LIMITS, agent, kernel_over

INJECTIONS = [
    "'); DROP TABLE audit; --",
    "\\'; DROP TABLE audit; --",
    "\\\\'; COMMIT; DELETE FROM audit; --",
    "$$; DELETE FROM audit; $$",
    "$tag$ x $tag$",
    "%s %(x)s %% ? ?? $1",
    "E'\\x00'",
    "\"quoted\" 'single' `back`",
    "\u2019\u02bc\uff07 \u0000-less but \u202e\u0008\u001b[31m",
    "\\",
    "a" * 100_000,
    "; ROLLBACK; BEGIN; ",
    "\U0001f600\u00e9\u0301",
]
REFUSED = ["nul\u0000inside", "\ud800 lone surrogate"]


async def test_hostile_values_are_stored_as_given_or_refused_typed(
        pg_database: str, tmp_path: Path) -> None:
    async with DenoSandbox(memory_mb=LIMITS.memory_mb) as deno, kernel_over(
            tmp_path, deno, store=pg_database) as kernel:
        pid = agent(kernel)
        seqs = kernel.store.head_seq
        for i, value in enumerate(INJECTIONS):
            key = f"k{i}"
            await kernel.call_tool(pid, "put_object", {"name": key, "type": "json", "value": {
                "text": value, "list": [value, i, 2**62, -(2**63)], value[:200]: True}})
            got = await kernel.call_tool(pid, "get_object", {"name": key})
            assert got["value"]["text"] == value, got
        outcomes: list[Any] = []
        for value in [*REFUSED, 2**64, -(2**64) - 1, 10**400]:
            try:
                await kernel.call_tool(pid, "put_object", {"name": "bad", "type": "json",
                                                                "value": {"v": value}})
                got = await kernel.call_tool(pid, "get_object", {"name": "bad"})
                outcomes.append(("stored", got))
            except LibosError as exc:
                outcomes.append(("refused", exc.code))
        # a tool registered with a hostile description and schema, called with hostile args
        await kernel.call_tool(pid, "register_tool", {
            "name": "echo", "lang": "ts", "description": INJECTIONS[0] + INJECTIONS[5],
            "source": "export default async function run(a: unknown) { return a; }",
            "schema": {"type": "object", "description": INJECTIONS[2]}})
        for value in INJECTIONS[:6]:
            assert await kernel.call_tool(pid, "echo", {"x": value}) == {"x": value}
        # a plain text column (the process's working directory) with quotes and backslashes
        hostile_dir = "/data/x'); DROP TABLE audit; -- \\' $$"
        await kernel.call_tool(pid, "make_dir", {"path": hostile_dir})
        await kernel.call_tool(pid, "change_dir", {"path": hostile_dir})
        assert (await kernel.call_tool(pid, "whoami", {}))["cwd"] == hostile_dir
        assert kernel.store.get_process(pid)["cwd"] == hostile_dir
        count, problems = kernel.verify_audit()
        assert problems == [] and count == kernel.store.head_seq > seqs
        assert await kernel.call_tool(pid, "get_object", {"name": "k0"})
        assert outcomes[1] == ("refused", "INVALID_ARGUMENT")  # a lone surrogate
        assert [o[0] for o in outcomes] == ["stored", "refused", "stored", "stored", "stored"]
    # the database and its chain survived: a second opener verifies them
    async with Kernel.open(pg_database, fs_root=tmp_path / "libos-fs") as again:
        count2, problems2 = again.verify_audit()
        assert problems2 == [] and count2 >= count
