"""The path check decides once when resolution leaves the path as named (check_path). Attacked
where a second decision would matter if decide were not a function of the table, the path and
the call: counted grants (spent exactly once, never skipped, also when a link leads to
them), a capability revoked between two calls, an approval answered once. Both ways of
opening a path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import ApprovalDenied, Kernel, NotCapable
from tests.conftest import open_image

pytestmark = pytest.mark.usefixtures("fs_walk")

NEEDS = ("fs:/**:read,write",)


def once(scope: str, right: str = "read") -> dict[str, Any]:
    return {"kind": "fs", "scope": scope, "rights": [right], "uses": 1}


async def _proc(kernel: Kernel, *caps: Any) -> int:
    root = Path(kernel.fs.root)  # type: ignore[attr-defined]
    for d in ("pub", "once"):
        (root / d).mkdir(exist_ok=True)
    (root / "pub/ok.txt").write_text("ok")
    (root / "once/a.txt").write_text("A")
    (root / "once/b.txt").write_text("B")
    os.symlink("../once/a.txt", root / "pub/alias")
    await open_image(kernel, needs=NEEDS)
    return kernel.spawn("agent", caps=list(caps))


def _uses(kernel: Kernel, pid: int, scope: str) -> int | None:
    """What is left of the capability on `scope` (a spent one leaves the table and the
    store: 0)."""
    held = [c.get("uses") for c in kernel.capabilities(pid) if c["scope"] == scope]
    stored = [c.uses for _, c in kernel.store.load_capabilities() if c.scope == scope]
    assert held == stored and len(held) <= 1, (held, stored)
    return held[0] if held else 0


async def _refused(kernel: Kernel, pid: int, path: str) -> None:
    before = len(kernel.audit())
    with pytest.raises(NotCapable):
        await kernel.call_tool(pid, "read_file", {"path": path})
    [denied] = [r for r in kernel.audit()[before:] if r["phase"] == "denied"]
    assert (denied["syscall"], denied["detail"]["error"]) == ("fs.read", "NOT_CAPABLE")


async def test_a_one_shot_grant_on_a_plain_path_is_spent_exactly_once(kernel: Kernel) -> None:
    pid = await _proc(kernel, once("/once/a.txt"), once("/once/b.txt"),
                      "fs:/pub/**:read")
    assert _uses(kernel, pid, "/once/a.txt") == 1
    assert await kernel.call_tool(pid, "read_file", {"path": "/once/a.txt"}) == "A"
    assert _uses(kernel, pid, "/once/a.txt") == 0
    await _refused(kernel, pid, "/once/a.txt")
    await _refused(kernel, pid, "/pub/alias")  # nor through a link to it
    # The spend is one record's: one intent naming the grant.
    spends = [r for r in kernel.audit(pid) if r["phase"] == "intent"
              and r["resource"] == "/once/a.txt"]
    assert len(spends) == 1
    # The neighbour grant is untouched, and still good once.
    assert _uses(kernel, pid, "/once/b.txt") == 1
    assert await kernel.call_tool(pid, "read_file", {"path": "/once/b.txt"}) == "B"
    assert await kernel.call_tool(pid, "read_file", {"path": "/pub/ok.txt"}) == "ok"


async def test_a_link_to_a_one_shot_file_spends_the_grant_once(kernel: Kernel) -> None:
    """The link's own name is covered by a standing capability; what it leads to only by the
    one-shot grant: the second decision (on the resolved path) spends it, once."""
    pid = await _proc(kernel, once("/once/a.txt"), "fs:/pub/**:read")
    assert _uses(kernel, pid, "/once/a.txt") == 1
    assert await kernel.call_tool(pid, "read_file", {"path": "/pub/alias"}) == "A"
    assert _uses(kernel, pid, "/once/a.txt") == 0
    await _refused(kernel, pid, "/pub/alias")
    await _refused(kernel, pid, "/once/a.txt")
    assert await kernel.call_tool(pid, "read_file", {"path": "/pub/ok.txt"}) == "ok"


async def test_a_revoked_capability_allows_nothing_on_the_next_call(kernel: Kernel) -> None:
    pid = await _proc(kernel, "fs:/once/**:read", "fs:/pub/**:read")
    assert await kernel.call_tool(pid, "read_file", {"path": "/once/a.txt"}) == "A"
    [cap] = [c for c in kernel.capabilities(pid) if c["scope"] == "/once/**"]
    kernel.revoke(cap["id"])
    await _refused(kernel, pid, "/once/a.txt")
    await _refused(kernel, pid, "/pub/alias")
    assert await kernel.call_tool(pid, "read_file", {"path": "/pub/ok.txt"}) == "ok"


async def test_an_approval_answered_once_allows_exactly_one_call(kernel: Kernel) -> None:
    ask = {"kind": "fs", "scope": "/once/**", "rights": ["read"], "effect": "ask"}
    pid = await _proc(kernel, ask, "fs:/pub/**:read")
    results: list[Any] = []

    async def call() -> None:
        try:
            results.append(await kernel.call_tool(pid, "read_file", {"path": "/once/a.txt"}))
        except ApprovalDenied as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        kernel.approve(kernel.approvals()[0]["id"])
    assert results == ["A"]
    # The same call again asks again: the answer was for one call, not for the path.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        with trio.fail_after(5):
            while not kernel.approvals():
                await trio.sleep(0.01)
        before = len(kernel.audit())
        kernel.deny(kernel.approvals()[0]["id"])
    assert results[0] == "A" and isinstance(results[1], ApprovalDenied), results
    assert [r["detail"]["error"] for r in kernel.audit()[before:]
            if r["syscall"] == "fs.read" and r["phase"] == "denied"] == ["APPROVAL_DENIED"]
    assert await kernel.call_tool(pid, "read_file", {"path": "/pub/ok.txt"}) == "ok"
