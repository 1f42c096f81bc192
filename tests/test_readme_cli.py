"""The README's CLI reference stays true: the builtin tools it lists are the kernel's, the image
it shows for `libos mcp` is served as written, its `ask` capability asks, and every file a
store keeps beside itself is one it names."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import Kernel
from broker.kernel.builtin_tools import BUILTINS
from broker.syscalls import TABLE
from tests.conftest import bare_env

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(title)
    return README[start:README.index("\n#", start + len(title))]


def test_the_builtin_tools_listed_are_the_kernels() -> None:
    rows = re.findall(r"^\| `(\w+)` \| `([\w.]+)` \| (.*?) \| (.*?) \|$",
                      section("### Builtin tools"), re.M)
    assert [(name, syscall) for name, syscall, _, _ in rows] == [
        (name, b.syscall) for name, b in BUILTINS.items()]
    for name, syscall, needs, does in rows:
        spec = TABLE[syscall]
        if spec.kind is None:  # authorized by lineage or ownership: no capability kind
            assert needs.startswith("nothing"), name
        else:
            assert needs == f"`{spec.kind}:…:{spec.right}`", name
        assert does == BUILTINS[name].description


def _json_blocks(text: str) -> list[Any]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


async def test_the_image_shown_for_libos_mcp_is_served_as_written(tmp_path: Path) -> None:
    pytest.importorskip("mcp")
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    image = _json_blocks(section("## MCP server"))[0]
    (tmp_path / "files.json").write_text(json.dumps(image))
    (tmp_path / "tools-fs" / "data").mkdir(parents=True)
    command = re.search(r"`libos --db tools.db mcp --image files.json\s+--caps ('[^']+')`",
                        section("## MCP server"))
    assert command is not None
    params = StdioServerParameters(
        command=sys.executable, cwd=str(tmp_path),
        args=["-m", "broker.cli", "--db", "tools.db", "mcp", "--image", "files.json",
              "--caps", *shlex.split(command.group(1))], env=bare_env())
    async with Client(params) as client:
        listed = await client.list_tools()
        assert sorted(t.name for t in listed.tools) == sorted(image["tools"])
        written = await client.call_tool("write_file", {"path": "/data/a.txt", "data": "hi"})
        assert not written.is_error
        secret = await client.call_tool("write_file", {"path": "/data/secrets/k", "data": "x"})
        assert secret.is_error and '"NOT_CAPABLE"' in secret.content[0].text  # its denies
    assert (tmp_path / "tools-fs" / "data" / "a.txt").read_text() == "hi"


async def test_the_ask_capability_shown_asks(tmp_path: Path) -> None:
    run = section("## `libos run`")
    [ask] = re.findall(r"'(\{\"kind\".*?\})'", run)
    spec = json.loads(ask)
    assert spec["effect"] == "ask"
    async with Kernel.open(tmp_path / "a.db") as kernel:
        Path(kernel.fs.root, "notes").mkdir()  # type: ignore[attr-defined]
        await kernel.register_image({"name": "notes", "tools": ["write_file"],
                                     "needs": ["fs:/notes/**:read,write"]})
        pid = kernel.spawn("notes", caps=["fs:/notes/**:read", spec])
        [cap] = [c for c in kernel.capabilities(pid) if c["effect"] == "ask"]
        assert (cap["uses"], cap["expires"]) == (spec["uses"], spec["expires"])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(kernel.call_tool, pid, "write_file",
                               {"path": "/notes/a.txt", "data": "x"})
            with trio.fail_after(5):
                while not kernel.approvals():
                    await trio.sleep(0.01)
            [request] = kernel.approvals()
            assert (request["resource"], request["ask_scope"]) == ("/notes/a.txt", "/notes/**")
            kernel.approve(request["id"])


async def test_every_file_beside_a_store_is_one_the_readme_names(tmp_path: Path) -> None:
    """A store a broker has used (with sandboxes, as `libos run` opens them), looked at while
    the broker is still running and after it is gone."""
    listed = re.findall(r"^\| `DIR/([^`]+)`(?:, `DIR/([^`]+)`)? \|",
                        section("### Where a store keeps its files"), re.M)
    names = {n.replace("NAME", "s") for pair in listed for n in pair if n}
    assert {"s.db", "s.db-wal", "s.db-shm", "s.db.lock", "s-fs/", "s-sandboxes/"} == names
    image = tmp_path / "i.json"
    image.write_text(json.dumps({"name": "i", "tools": ["write_file", "register_tool"],
                                 "needs": ["fs:/**:write", "tool:*:register,call"],
                                 "planner": {"kind": "scripted", "actions": [
                                     {"tool": "write_file", "args": {"path": "/a",
                                                                     "data": "x"}}]}}))
    done = await trio.run_process([sys.executable, "-m", "broker.cli", "--db",
                                   str(tmp_path / "s.db"), "run", str(image), "--goal", "go"],
                                  capture_stderr=True, capture_stdout=True, check=False)
    assert done.returncode == 0, done.stderr

    def beside() -> set[str]:
        return {p.name + ("/" if p.is_dir() else "") for p in tmp_path.iterdir()} - {"i.json"}

    assert beside() <= names and {"s.db", "s-fs/", "s-sandboxes/", "s.db.lock"} <= beside()
    async with Kernel.open(tmp_path / "s.db"):
        assert beside() == names  # while a broker has it open: the write-ahead log too
    assert (tmp_path / "s-fs" / "a").read_text() == "x"
    assert "~/.cache/libos/pyodide-VERSION" in README and "$LIBOS_PYODIDE_DIR" in README
