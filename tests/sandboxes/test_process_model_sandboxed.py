"""The process-model syscalls from TypeScript in Deno: a tool that execs its process keeps
running, but only with the narrowed authority (the rest of its own call included); an image it
registers from the sandbox is held to what the process holds now."""

from __future__ import annotations

import pytest

from broker import AgentImage, Kernel, NotCapable, NotFound
from tests.sandboxes.conftest import NEEDS, audit_of, register_tool

SOURCE = """export default async function run(args: unknown, libos: any) {
  const code = async (f: () => Promise<unknown>) => {
    try { return await f(); } catch (e: any) { return e.code; }
  };
  const before = await libos.fs.read("/data/secret");
  const done = await libos.proc.exec("narrow");
  const after = await code(() => libos.fs.read("/data/secret"));
  const pub = await libos.fs.read("/data/pub/a");
  const wide = await code(() => libos.image.register({name: "team.wide",
                                                      needs: ["fs:/data/**:read"]}));
  const ok = await libos.image.register({name: "team.ok", needs: ["fs:/data/pub/**:read"]});
  return {before, from: done.from, to: done.to, after, pub, wide, ok: ok.version};
}"""


async def test_a_tool_that_execs_its_process_keeps_only_the_narrowed_authority(
        dk: Kernel) -> None:
    await dk.register_image(AgentImage(
        "shifter", tools=("write_file", "make_dir", "register_tool"),
        needs=(*NEEDS, "proc:*:exec", "image:*:register")))
    await dk.register_image(AgentImage(
        "narrow", tools=("read_file",),
        needs=("fs:/data/pub/**:read", "image:team.*:register")))
    pid = dk.spawn("shifter", caps=["fs:/data/**:read,write", "tool:ts:register",
                                    "proc:narrow:exec", "image:team.*:register"])
    await dk.call_tool(pid, "make_dir", {"path": "/data/pub"})
    await dk.call_tool(pid, "write_file", {"path": "/data/pub/a", "data": "public"})
    await dk.call_tool(pid, "write_file", {"path": "/data/secret", "data": "secret"})
    await register_tool(dk, pid, "t", SOURCE, lang="ts")
    got = await dk.call_tool(pid, "t", {})
    assert got == {"before": "secret", "from": "shifter:1", "to": "narrow:1",
                   "after": "NOT_CAPABLE", "pub": "public", "wide": "NOT_CAPABLE", "ok": "1"}
    denied = [r for r in audit_of(dk, pid, "fs.read") if r["phase"] == "denied"]
    assert [(r["tool"], r["resource"]) for r in denied] == [("t", "/data/secret")]
    [refused] = [r for r in audit_of(dk, pid, "image.register") if r["phase"] == "denied"]
    assert refused["tool"] == "t" and refused["resource"] == "team.wide"
    # The tool itself was the old image's: the table is the new one's now.
    assert [t["name"] for t in dk.list_tools(pid)] == ["read_file"]
    with pytest.raises(NotFound):
        await dk.call_tool(pid, "t", {})
    with pytest.raises(NotCapable):
        await dk.call_tool(pid, "read_file", {"path": "/data/secret"})
