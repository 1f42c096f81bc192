"""Red team 5 on rows beside the chain read without `json_column.read_json` (invariant 6): a
capability row's policy and a registered tool's spec, edited by a writer without the key into
JSON nested past what Python's parser takes. One edited row must end (or narrow) only its own
process, never stop `Kernel.open` or `libos audit --verify` with a RecursionError."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from broker.cli import main as cli_main
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.conftest import anchor_problems, open_image

fs_root = links.fs_root
DEEP = "[" * 100_000


async def test_a_capability_policy_nested_too_deep_does_not_stop_the_open(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        neighbour = kernel.spawn("agent", caps=[PUB])
    edit(store_at, "UPDATE capabilities SET policy=? WHERE owner=?", (DEEP, pid))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_verify_with_a_capability_policy_nested_too_deep_names_it(
        store_at: Path | str, fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
    edit(store_at, "UPDATE capabilities SET policy=? WHERE owner=?", (DEEP, pid))
    assert cli_main(["audit", "--verify", "--db", str(store_at)]) == 1


async def test_a_capability_policy_not_json_ends_only_its_own_processs_grants(
        store_at: Path | str, fs_root: Path) -> None:
    """Not JSON at all (Tampered, typed, before): it stopped the open for everyone. Now its
    process holds nothing (the row may have been a deny rule: fail closed), recorded."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        neighbour = kernel.spawn("agent", caps=[PUB])
    edit(store_at, "UPDATE capabilities SET policy=? WHERE owner=?", ("{", pid))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
        assert kernel.capabilities(pid) == []
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert any("cannot be read back" in p for p in anchor_problems(kernel))


async def test_a_tool_registration_nested_too_deep_does_not_stop_the_open(
        store_at: Path | str, fs_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A `process_tools` row planted (or edited) with a spec nested past the parser: read as
    {} like one not JSON (the chain vouches for no such spec: the tool is refused), never a
    RecursionError out of the open or `libos audit --verify`."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        neighbour = kernel.spawn("agent", caps=[PUB])
    edit(store_at, "INSERT INTO process_tools(pid, name, spec) VALUES (?,?,?)",
         (pid, "deep", DEEP))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
        assert "deep" not in kernel.process(neighbour).tools
    assert cli_main(["audit", "--verify", "--db", str(store_at)]) in (0, 1)
    assert "INTERNAL" not in capsys.readouterr().err
