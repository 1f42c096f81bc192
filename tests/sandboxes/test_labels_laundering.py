"""Sandboxed tools cannot launder a label: a TypeScript, Python or WebAssembly tool that reads
a secret and hands back something made from it (reversed, hashed, one bit of it, split across
objects or across calls in a warm sandbox) still carries `secret` into whatever it or its
caller writes. Real Deno, Pyodide and Wasmtime; the export bound refuses, with its record."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, Kernel, NotCapable
from broker.store.audit import CLOSES
from sandboxes.wasm import WasmSandbox
from tests.broker.kernel.test_labels import EXPORT as _EXPORT
from tests.conftest import ALL_BUILTINS
from tests.sandboxes.conftest import NEEDS, register_tool
from tests.sandboxes.test_wasm import lib, read_args

SECRET = {"kind": "fs", "scope": "/data/secrets/**", "rights": ["read"], "labels": ["secret"]}
EXPORT = {**_EXPORT, "scope": "/data/exports/**"}
CAPS = [SECRET, EXPORT, "fs:/data/public/**:read", "obj:*:read,write", "tool:*:register,call"]

TS = """
let stash = "";
const code = async (f: () => Promise<unknown>) => {
  try { await f(); return "ok"; } catch (e: any) { return e.code; }
};
export default async function run(args: any, libos: any) {
  if (args.step === "stash") {
    stash = await libos.fs.read("/data/secrets/token.txt");
    return "stashed";
  }
  if (args.step === "leak") {
    return await code(() => libos.fs.write("/data/exports/stash.txt", stash));
  }
  if (args.step === "public") {
    const text = await libos.fs.read("/data/public/readme.txt");
    return await code(() => libos.fs.write("/data/exports/readme.txt", text));
  }
  const secret: string = await libos.fs.read("/data/secrets/token.txt");
  const reversed = secret.split("").reverse().join("");
  let hash = 7;
  for (const c of secret) hash = (hash * 31 + c.charCodeAt(0)) % 1000003;
  await libos.obj.put("half1", "json", {v: secret.slice(0, 3)});
  await libos.obj.put("half2", "json", {v: secret.slice(3)});
  const inside = await code(() => libos.fs.write("/data/exports/inside.txt", reversed));
  return {reversed, hash, inside};
}
"""

PY = """
import hashlib
kept = ""

def run(args, libos):
    global kept
    def code(f):
        try:
            f()
            return "ok"
        except libos.LibosError as exc:
            return exc.code
    step = args.get("step")
    if step == "stash":
        kept = libos.fs.read_text("/data/secrets/token.txt")
        return "stashed"
    if step == "leak":
        return code(lambda: libos.fs.write("/data/exports/stash.txt", kept))
    if step == "public":
        text = libos.fs.read_text("/data/public/readme.txt")
        return code(lambda: libos.fs.write("/data/exports/readme.txt", text))
    secret = libos.fs.read_text("/data/secrets/token.txt")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    libos.obj.put("half1", "json", {"v": secret[:3]})
    libos.obj.put("half2", "json", {"v": secret[3:]})
    inside = code(lambda: libos.fs.write("/data/exports/inside.txt", secret[::-1]))
    return {"reversed": secret[::-1], "hash": digest, "inside": inside}
"""


def _files(kernel: Kernel) -> Path:
    root = Path(kernel.fs.root, "data")  # type: ignore[attr-defined]
    for name in ("secrets", "exports", "public"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "secrets" / "token.txt").write_text("tok-123")
    (root / "public" / "readme.txt").write_text("hello")
    return root


def _denied_writes(kernel: Kernel, pid: int) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == "fs.write"
            and r["phase"] == "denied"]


async def _launder(kernel: Kernel, lang: str, source: str) -> None:
    root = _files(kernel)
    # The neighbour: a process that never read the secret exports public data from its tool.
    clean = kernel.spawn("agent", caps=CAPS)
    await register_tool(kernel, clean, "t", source, lang=lang)
    assert await kernel.call_tool(clean, "t", {"step": "public"}) == "ok"
    assert (root / "exports" / "readme.txt").read_text() == "hello"
    assert kernel.process(clean).label == frozenset()
    # Transformed in the tool: its own export is refused, and what it returns is labelled.
    pid = kernel.spawn("agent", caps=CAPS)
    await register_tool(kernel, pid, "t", source, lang=lang)
    out = await kernel.call_tool(pid, "t", {})
    assert out["reversed"] == "321-kot" and out["inside"] == "NOT_CAPABLE"
    assert kernel.process(pid).label == {"secret"}
    with pytest.raises(NotCapable, match="secret"):
        await kernel.call_tool(pid, "write_file", {"path": "/data/exports/r.txt",
                                                   "data": out["reversed"]})
    for half in ("half1", "half2"):  # split across objects: each keeps the label
        assert kernel.store.get_object(f"proc/{pid}", half)["labels"] == {"secret"}
    denied = _denied_writes(kernel, pid)
    assert [(r["tool"], r["detail"]["labels"]) for r in denied] == [
        ("t", ["secret"]), ("write_file", ["secret"])]
    # Split across calls: one call keeps the secret in the warm sandbox and returns nothing of
    # it, the next tries to export what was kept.
    other = kernel.spawn("agent", caps=CAPS)
    await register_tool(kernel, other, "t", source, lang=lang)
    assert await kernel.call_tool(other, "t", {"step": "stash"}) == "stashed"
    assert await kernel.call_tool(other, "t", {"step": "leak"}) == "NOT_CAPABLE"
    assert [r["detail"]["labels"] for r in _denied_writes(kernel, other)] == [["secret"]]
    assert sorted(p.name for p in (root / "exports").iterdir()) == ["readme.txt"]


async def test_a_typescript_tool_cannot_launder_a_secret(dk: Kernel) -> None:
    await _launder(dk, "ts", TS)


async def test_a_python_tool_cannot_launder_a_secret(pk: Kernel) -> None:
    await _launder(pk, "python", PY)


# A WebAssembly tool that reads the file its `path` argument names and returns one bit of it
# (`1`), not the data: the bit is still the secret's.
ONE_BIT = lib("""
  (data (i32.const 1024) "fs.read")
  (data (i32.const 1100) "path")
  (func (export "run") (param $args i32) (param $len i32) (result i64)
    (call $sys_begin (i32.const 1024) (i32.const 7))
    """ + read_args() + """
    (if (i32.eqz (call $sys_call)) (then (return (call $sys_response))))
    (call $ret_begin)
    (call $mp_int (i64.const 1))
    (call $ret_end))""")


@pytest.fixture
async def wk(db_path: Path, tmp_path: Path) -> AsyncIterator[Kernel]:
    async with Kernel.open(db_path, sandboxes=[WasmSandbox(tmp_path / "wasm-cache")]) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        yield k


async def test_a_wasm_tool_cannot_launder_a_secret(wk: Kernel) -> None:
    root = _files(wk)
    clean, pid = wk.spawn("agent", caps=CAPS), wk.spawn("agent", caps=CAPS)
    for who in (clean, pid):
        await register_tool(wk, who, "bit", ONE_BIT, lang="wat")
    assert await wk.call_tool(clean, "bit", {"path": "/data/public/readme.txt"}) == 1
    await wk.call_tool(clean, "write_file", {"path": "/data/exports/ok.txt", "data": "1"})
    assert (root / "exports" / "ok.txt").read_text() == "1"
    assert await wk.call_tool(pid, "bit", {"path": "/data/secrets/token.txt"}) == 1
    assert wk.process(pid).label == {"secret"}
    [outcome] = [r for r in wk.audit(pid) if r["syscall"] == "fs.read"
                 and r["phase"] in CLOSES]
    assert outcome["tool"] == "bit" and outcome["detail"]["labels"] == ["secret"]
    with pytest.raises(NotCapable, match="secret"):
        await wk.call_tool(pid, "write_file", {"path": "/data/exports/bit.txt", "data": "1"})
    assert [r["detail"]["labels"] for r in _denied_writes(wk, pid)] == [["secret"]]
    assert not (root / "exports" / "bit.txt").exists()


async def test_a_tool_written_by_a_labelled_process_carries_its_label(dk: Kernel) -> None:
    """The secret goes into a tool's source; the tool goes into an image; a fresh process of
    that image runs it. What runs it takes on the registrant's label."""
    root = _files(dk)
    writer = dk.spawn("agent", caps=CAPS)
    token = await dk.call_tool(writer, "read_file", {"path": "/data/secrets/token.txt"})
    source = f'export default async function run() {{ return {token!r}; }}'
    await register_tool(dk, writer, "constant", source, lang="ts")
    assert dk.process(writer).tools["constant"]["labels"] == ["secret"]
    dk.checkpoint(writer)
    dk.commit_image(writer, "carrier")
    fresh = dk.spawn("carrier", caps=[EXPORT, "fs:/data/public/**:read"])
    assert dk.process(fresh).label == frozenset()
    # The neighbour: its public work exports fine before it runs the tool.
    await dk.call_tool(fresh, "write_file", {"path": "/data/exports/before.txt", "data": "ok"})
    assert await dk.call_tool(fresh, "constant", {}) == "tok-123"
    assert dk.process(fresh).label == {"secret"}
    with pytest.raises(NotCapable, match="secret"):
        await dk.call_tool(fresh, "write_file", {"path": "/data/exports/t.txt",
                                                 "data": "tok-123"})
    assert sorted(p.name for p in (root / "exports").iterdir()) == ["before.txt"]
