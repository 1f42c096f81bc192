"""Replay of sandboxed tool runs: the code that ran (found by its registration in the audit,
even after the name was registered again) is fed the recorded syscall results."""

from __future__ import annotations

from pathlib import Path

from broker import Kernel
from sandboxes.wasm import WasmSandbox
from tests.conftest import open_image
from tests.sandboxes.conftest import CAPS

V1 = """export default async function run(args: {path: string}, libos: any) {
  return (await libos.fs.read(args.path)).toUpperCase();
}"""
V2 = """export default async function run(args: {path: string}, libos: any) {
  return "v2 says " + (await libos.fs.read(args.path));
}"""
WASM_EXAMPLES = Path(__file__).resolve().parents[2] / "wasm-tools" / "examples"


def _last_call(kernel: Kernel, pid: int, tool: str) -> int:
    return [r["seq"] for r in kernel.audit(pid) if r["syscall"] == "tool.call"
            and r["phase"] == "intent" and r["resource"] == tool][-1]


async def test_typescript_run_replays_with_the_code_that_ran(dk: Kernel) -> None:
    pid = dk.spawn("agent", caps=CAPS)
    note = Path(dk.fs.root, "data", "note.txt")  # type: ignore[attr-defined]
    note.write_text("hello")
    await dk.call_tool(pid, "register_tool", {"name": "shout", "lang": "ts", "source": V1})
    assert await dk.call_tool(pid, "shout", {"path": "/data/note.txt"}) == "HELLO"
    inv = _last_call(dk, pid, "shout")
    await dk.call_tool(pid, "register_tool", {"name": "shout", "lang": "ts", "source": V2})
    note.write_text("changed")
    replayed = await dk.replay(inv)
    assert replayed["same"] is True and replayed["replayed"]["value"] == "HELLO"


async def test_wasm_run_replays(db_path: Path, tmp_path: Path) -> None:
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")]) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=["fs:/**:read", "tool:wat:register"])
        Path(kernel.fs.root, "f.txt").write_text("a b c")  # type: ignore[attr-defined]
        await kernel.call_tool(pid, "register_tool", {
            "name": "wc", "lang": "wat",
            "source": (WASM_EXAMPLES / "wordcount.wat").read_text()})
        counted = await kernel.call_tool(pid, "wc", {"path": "/f.txt"})
        Path(kernel.fs.root, "f.txt").unlink()  # type: ignore[attr-defined]
        replayed = await kernel.replay(_last_call(kernel, pid, "wc"))
        assert replayed["same"] is True and replayed["replayed"]["value"] == counted
