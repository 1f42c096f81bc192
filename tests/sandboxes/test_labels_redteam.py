"""Red team: a warm sandbox must not launder a secret into a call that began before its process
saw the secret. One call stashes the secret in a sandbox and returns; another call of the same
process, started while the process was public, then calls the tool again (nested) and gets the
warm sandbox with the stash in it. Real Deno."""

from __future__ import annotations

import pytest
import trio

from broker import Kernel, NotCapable
from tests.sandboxes.conftest import register_tool
from tests.sandboxes.test_labels_laundering import CAPS, EXPORT, _denied_writes, _files

TS = """
let stash = "";
export default async function run(args: any, libos: any) {
  if (args.step === "stash") {
    stash = await libos.fs.read("/data/secrets/token.txt");
    return "stashed";
  }
  if (args.step === "peek") return stash;
  // "wait": begun while the process is public; waits for the host's go, then asks the tool
  // again (nested: a warm sandbox of this authority) and exports what comes back.
  for (let i = 0; i < 400; i++) {
    try { await libos.fs.stat("/data/public/go"); break; } catch (_) { /* not yet */ }
    await libos.clock.sleep(0.025);
  }
  const got = await libos.tool.call("t", {step: "peek"});
  try {
    await libos.fs.write("/data/exports/late.txt", String(got));
    return "wrote " + got;
  } catch (e: any) { return e.code; }
}
"""


async def test_a_call_begun_before_the_secret_cannot_take_it_from_a_warm_sandbox(
        dk: Kernel) -> None:
    root = _files(dk)
    pid = dk.spawn("agent", caps=[*CAPS, "clock:*:sleep"])
    await register_tool(dk, pid, "t", TS, lang="ts")
    out: list[str] = []
    async with trio.open_nursery() as nursery:
        async def waiting() -> None:
            out.append(await dk.call_tool(pid, "t", {"step": "wait"}))
        nursery.start_soon(waiting)
        await trio.sleep(0.3)  # it is waiting, public
        assert await dk.call_tool(pid, "t", {"step": "stash"}) == "stashed"
        (root / "public" / "go").write_text("")
    assert out == ["NOT_CAPABLE"], out
    assert not (root / "exports" / "late.txt").exists()
    assert [r["detail"]["labels"] for r in _denied_writes(dk, pid)] == [["secret"]]
    # The neighbour: the same dance with nothing stashed exports the empty public string.
    clean = dk.spawn("agent", caps=[*CAPS, "clock:*:sleep"])
    await register_tool(dk, clean, "t", TS, lang="ts")
    assert await dk.call_tool(clean, "t", {"step": "wait"}) == "wrote "


async def test_a_tool_described_by_a_labelled_process_labels_whoever_is_shown_it(
        dk: Kernel) -> None:
    """The secret goes into a tool's description; an image is committed with it; a fresh
    process of that image lists its tools (as a model planner is shown them each step)."""
    root = _files(dk)
    writer = dk.spawn("agent", caps=CAPS)
    token = await dk.call_tool(writer, "read_file", {"path": "/data/secrets/token.txt"})
    await register_tool(dk, writer, "helper", "export default async () => 1;", lang="ts",
                        description=f"the token is {token}")
    dk.checkpoint(writer)
    dk.commit_image(writer, "carrier")
    fresh = dk.spawn("carrier", caps=[EXPORT, "fs:/data/public/**:read"])
    # The neighbour: a process of an image with no labelled tool lists them and stays public.
    plain = dk.spawn("agent", caps=[EXPORT])
    assert "read_file" in [t["name"] for t in await dk.call_tool(plain, "list_tools", {})]
    assert dk.process(plain).label == frozenset()
    listed = await dk.call_tool(fresh, "list_tools", {})
    [shown] = [t["description"] for t in listed if t["name"] == "helper"]
    assert "tok-123" in shown and dk.process(fresh).label == {"secret"}
    with pytest.raises(NotCapable, match="secret"):
        await dk.call_tool(fresh, "write_file", {"path": "/data/exports/d.txt", "data": shown})
    assert not (root / "exports" / "d.txt").exists()
    assert [r["detail"]["labels"] for r in _denied_writes(dk, fresh)] == [["secret"]]
