"""Red team on the spends that bound a counted grant's `uses` (invariant 15), by whoever can
write the database but holds no key. Every use of a counted capability is an intent record
naming it, and the links' walk counts them; a spend whose record is itself of a name that
vouches for rows (`proc.spawn`: a counted `proc:<image>:spawn` grant spent by a spawn) is a
spend too. A writer who gives such a spent grant its uses back is refused at the next open,
and recorded; the process's other grants still work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import _given_back, _row
from tests.conftest import anchor_problems, open_image

PUB = "fs:/data/pub/**:read"
SPAWN_TWICE = {"kind": "proc", "scope": "agent", "rights": ["spawn"], "uses": 2}
SPAWN_ONCE = {**SPAWN_TWICE, "uses": 1}


fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


@pytest.mark.parametrize("grant", [SPAWN_ONCE, SPAWN_TWICE], ids=["one-shot", "two-uses"])
async def test_a_spent_spawn_grant_given_its_uses_back_is_refused(
        store_at: Path | str, fs_root: Path, grant: dict[str, object]) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[grant, PUB])
        [cap_id] = [c["id"] for c in kernel.capabilities(pid) if c["kind"] == "proc"]
        row = _row(kernel, cap_id)
        await kernel.call_tool(pid, "spawn", {"image": "agent"})  # (one use spent)
        spends = [r for r in kernel.audit(pid)
                  if r["syscall"] == "proc.spawn" and r["phase"] == "intent"]
        assert [r["cap_id"] for r in spends] == [cap_id]
    _given_back(store_at, cap_id, row)
    named = f"process {pid}'s capability {cap_id} (proc:agent:spawn, allow)"
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert cap_id not in {c["id"] for c in kernel.capabilities(pid)}
        children = len(kernel.ps())
        for _ in range(int(grant["uses"])):  # type: ignore[call-overload]
            with pytest.raises(NotCapable):  # never spent more than granted
                await kernel.call_tool(pid, "spawn", {"image": "agent"})
        assert len(kernel.ps()) == children
        records = kernel.audit(pid)
        assert [r for r in records if r["syscall"] == "proc.spawn" and r["phase"] == "denied"]
        noted = anchor_problems(kernel)
        assert [p for p in noted if p.startswith(named) and "count was raised" in p], noted
        assert any(p.startswith(named) and "count was raised" in p
                   for p in kernel.verify_audit()[1])
        # Its uncounted neighbour still reads.
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_an_honest_spawn_grant_keeps_its_uses_across_opens(
        store_at: Path | str, fs_root: Path) -> None:
    """The spends counted are the spawns made: a grant spent honestly is not refused."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[{**SPAWN_TWICE, "uses": 3}, PUB])
        await kernel.call_tool(pid, "spawn", {"image": "agent"})
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await kernel.call_tool(pid, "spawn", {"image": "agent"})
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await kernel.call_tool(pid, "spawn", {"image": "agent"})  # (its last)
        with pytest.raises(NotCapable):
            await kernel.call_tool(pid, "spawn", {"image": "agent"})
        assert not [p for p in kernel.verify_audit()[1] if "count was raised" in p]
