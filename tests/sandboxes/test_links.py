"""Hard links, attacked from inside each sandbox language (issue 14, item 1).

A TypeScript, a WebAssembly and a Python tool each read and write through hard links planted
in the process's tree: one to a file a deny rule protects, one to a file outside the fs root.
Every attempt is `NotCapable` in the tool's own language, a `denied` record attributed to the
tool before any effect, and the linked files are untouched; the same tool reads and writes a
plain file beside them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel, NotCapable
from sandboxes.deno import DenoSandbox
from sandboxes.pyodide import PyodideSandbox
from sandboxes.wasm import WasmSandbox
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import LIMITS, NEEDS
from tests.sandboxes.test_wasm import syscall_tool

SECRET = "TOKEN hunter2"
OUTSIDE = "OUTSIDE THE ROOT"
CAPS = ["fs:/**:read,write", "tool:*:register,call",
        {"kind": "fs", "scope": "/secret/**", "rights": ["read", "write"], "effect": "deny"}]
PASS_ARGS = "(call $r_begin (local.get $args) (local.get $len)) (call $mp_copy)"

# Each language's tool: {op: "read" | "write", path, data?} -> what fs.read or fs.write gave,
# or {code} of the typed error it failed with, caught in the tool's own language.
TOOLS: dict[str, str] = {
    "ts": """
export default async function run(args: any, libos: any) {
  try {
    return args.op === "read" ? await libos.fs.read(args.path)
                              : await libos.fs.write(args.path, args.data);
  } catch (e: any) {
    return {code: e.code, isNotCapable: e instanceof libos.NotCapable};
  }
}""",
    "python": """
def run(args, libos):
    try:
        if args["op"] == "read":
            return libos.fs.read_text(args["path"])
        return libos.fs.write_text(args["path"], args["data"])
    except libos.NotCapable as exc:
        return {"code": exc.code, "isNotCapable": True}
""",
}


def sandbox_for(lang: str, tmp_path: Path) -> Any:
    if lang == "ts":
        return DenoSandbox(spares=1, memory_mb=LIMITS.memory_mb)
    if lang == "python":
        return PyodideSandbox(spares=1, memory_mb=LIMITS.memory_mb)
    return WasmSandbox(tmp_path / "wasm-cache")


@pytest.fixture(params=["ts", "wat", "python"])
async def planted(request: pytest.FixtureRequest,
                  tmp_path: Path) -> AsyncIterator[tuple[Kernel, int, str, Path]]:
    lang = request.param
    root = tmp_path / "libos-fs"
    for path, text in (("secret/token.txt", SECRET), ("data/plain.txt", "plain")):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    outside = tmp_path / "outside.txt"
    outside.write_text(OUTSIDE)
    os.link(root / "secret/token.txt", root / "data/alias.txt")
    os.link(outside, root / "data/outside.txt")
    async with sandbox_for(lang, tmp_path) as sandbox, Kernel.open(
            tmp_path / "libos.db", sandboxes=[sandbox], call_limits=LIMITS) as kernel:
        await kernel.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        pid = kernel.spawn("agent", caps=CAPS)
        if lang == "wat":
            for op in ("read", "write"):
                await kernel.call_tool(pid, "register_tool", {
                    "name": f"fs_{op}", "lang": "wat", "source": syscall_tool(f"fs.{op}",
                                                                               PASS_ARGS)})
        else:
            await kernel.call_tool(pid, "register_tool", {"name": "fs_tool", "lang": lang,
                                                          "source": TOOLS[lang]})
        yield kernel, pid, lang, root


async def through_tool(kernel: Kernel, pid: int, lang: str, op: str, path: str,
                       data: str | None = None) -> Any:
    """The tool's answer; a WAT tool fails its call with the syscall's error instead."""
    if lang == "wat":
        args: dict[str, Any] = {"path": path} if data is None else {"path": path, "data": data}
        try:
            return await kernel.call_tool(pid, f"fs_{op}", args)
        except NotCapable as exc:
            return {"code": exc.code, "isNotCapable": True}
    args = {"op": op, "path": path, **({} if data is None else {"data": data})}
    return await kernel.call_tool(pid, "fs_tool", args)


@pytest.mark.parametrize("alias", ["/data/alias.txt", "/data/outside.txt"])
async def test_a_tool_reads_and_writes_nothing_through_a_hard_link(
        planted: tuple[Kernel, int, str, Path], tmp_path: Path, alias: str) -> None:
    kernel, pid, lang, root = planted
    before = kernel.store.head_seq
    for op, data in (("read", None), ("write", "clobbered")):
        got = await through_tool(kernel, pid, lang, op, alias, data)
        assert got == {"code": "NOT_CAPABLE", "isNotCapable": True}, (lang, op, got)
    records = [r for r in kernel.audit(pid) if r["seq"] > before
               and r["syscall"] in ("fs.read", "fs.write")]
    assert [(r["phase"], r["syscall"], r["resource"]) for r in records] == [
        ("denied", "fs.read", alias), ("denied", "fs.write", alias)]
    assert all(r["tool"] in ("fs_tool", "fs_read", "fs_write") for r in records)
    assert all("hard link" in r["detail"]["message"] for r in records)
    assert (root / "secret/token.txt").read_text() == SECRET
    assert (tmp_path / "outside.txt").read_text() == OUTSIDE
    # The same tool, on the plain file beside the links.
    assert await through_tool(kernel, pid, lang, "read", "/data/plain.txt") == "plain"
    assert await through_tool(kernel, pid, lang, "write", "/data/plain.txt", "fresh") == 5
    assert (root / "data/plain.txt").read_text() == "fresh"
