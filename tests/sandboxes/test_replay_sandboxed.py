"""Replay of sandboxed tool runs: the code that ran (found by its registration in the audit,
even after the name was registered again) is fed the recorded syscall results."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from sandboxes.wasm import WasmSandbox
from tests.broker.syscalls.test_net import Server, response, server  # noqa: F401 (fixture)
from tests.conftest import open_image
from tests.sandboxes.conftest import CAPS
from tests.sandboxes.test_wasm import syscall_tool

PASS_ARGS = "(call $r_begin (local.get $args) (local.get $len)) (call $mp_copy)"

V1 = """export default async function run(args: {path: string}, libos: any) {
  return (await libos.fs.read(args.path)).toUpperCase();
}"""
V2 = """export default async function run(args: {path: string}, libos: any) {
  return "v2 says " + (await libos.fs.read(args.path));
}"""
WASM_EXAMPLES = Path(__file__).resolve().parents[2] / "wasm-tools" / "examples"


def _last_call(kernel: Kernel, pid: int, tool: str) -> int:
    return [r["seq"] for r in kernel.audit(pid) if r["syscall"] == "tool.call"
            and r["phase"] in ("intent", "intent+outcome") and r["resource"] == tool][-1]


async def test_typescript_run_replays_with_the_code_that_ran(dk: Kernel) -> None:
    pid = dk.spawn("agent", caps=CAPS)
    note = Path(dk.fs.root, "data", "note.txt")  # type: ignore[attr-defined]
    note.write_text("hello")
    await dk.call_tool(pid, "register_tool", {"name": "shout", "lang": "ts", "source": V1})
    assert await dk.call_tool(pid, "shout", {"path": "/data/note.txt"}) == "HELLO"
    inv = _last_call(dk, pid, "shout")
    await dk.call_tool(pid, "register_tool", {"name": "shout", "lang": "ts", "source": V2,
                                               "replace": True})
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


async def test_a_fetch_that_followed_a_redirect_replays_as_one_call(
        db_path: Path, tmp_path: Path, server: Server) -> None:  # noqa: F811 (fixture)
    """A redirect hop is a call of its own in the audit (`follows` the first), but the tool
    made one call: replay feeds it the last hop's result, or the hop's refusal, and sends
    nothing."""
    base = server.base
    server.routes["/v1/go"] = lambda r: response(302, b"", [("Location", "/v1/there")])
    server.routes["/v1/there"] = lambda r: response(body=b"arrived")
    server.routes["/v1/leak"] = lambda r: response(302, b"", [("Location", "/admin/keys")])
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "cache")]) as kernel:
        await open_image(kernel, needs=("net:*:fetch", "tool:wat:register"))
        fetch = {"kind": "net", "scope": f"GET {base}/v1/*", "rights": ["fetch"]}
        pid = kernel.spawn("agent", caps=[fetch, "tool:wat:register"])
        await kernel.call_tool(pid, "register_tool", {
            "name": "get", "lang": "wat", "source": syscall_tool("net.fetch", PASS_ARGS)})
        fetched = await kernel.call_tool(pid, "get", {"url": f"{base}/v1/go"})
        assert fetched["body"] == "arrived" and fetched["redirects"] == [f"{base}/v1/there"]
        followed = _last_call(kernel, pid, "get")
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "get", {"url": f"{base}/v1/leak"})
        refused = _last_call(kernel, pid, "get")
        sent = len(server.requests)
        server.routes.clear()
        for inv in (followed, refused):
            hops = [r for r in kernel.audit(pid) if r["syscall"] == "net.fetch"
                    and r["detail"].get("follows") is not None and r["seq"] > inv]
            assert hops, "the hop is a call of its own in the audit"
            replayed = await kernel.replay(inv)
            assert replayed["same"] is True and replayed["syscalls"] == 1, replayed
        assert (await kernel.replay(followed))["replayed"]["value"] == fetched
        assert len(server.requests) == sent
