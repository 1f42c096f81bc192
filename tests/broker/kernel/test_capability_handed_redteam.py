"""Red team on the uses a parent hands on (invariant 15), by whoever can write the database but
holds no key. A counted row's uses fall by its spends and by what it hands on: a child's
spawn (`proc.spawn`) or a fork (`host.fork`) takes uses from the parent's row it narrows, and
an answer's grant takes them from the `ask` row that asked. The record of that act says how
many (`cap_handed`), and the links' walk counts them as spends: a writer who gives the parent
back what it handed on is refused at the next open, named and recorded; the child still uses
what it was handed, and an honest parent what it kept.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from broker import Kernel, NotCapable
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.test_cli import run
from tests.conftest import anchor_problems, approve_a_call, open_image

OTHER = "fs:/data/other/**:read"
SPAWN = "proc:agent:spawn"
READ, OTHER_F = {"path": "/data/pub/f"}, {"path": "/data/other/f"}


def counted(uses: int, effect: str = "allow") -> dict[str, object]:
    return {"kind": "fs", "scope": "/data/pub/**", "rights": ["read"], "effect": effect,
            "uses": uses}


fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


async def by_spawn(kernel: Kernel, parent: int) -> int:
    """Hands 2 of the parent's uses to a child it spawns (the parent keeps the rest)."""
    child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [counted(2)]})
    assert isinstance(child, int)
    return child


async def by_fork(kernel: Kernel, parent: int) -> int:
    """Hands 2 of the parent's uses to a fork of it."""
    return kernel.fork(parent, caps=[counted(2)])


async def by_answer(kernel: Kernel, parent: int) -> int:
    """Hands one of the parent's `ask` uses to the grant an answer `once` makes (spent by the
    read it approves)."""
    await approve_a_call(kernel, parent, "read_file", READ)
    return parent


HANDS = {"spawn": (by_spawn, "allow", 2), "fork": (by_fork, "allow", 2),
         "answer": (by_answer, "ask", 1)}
Hand = Callable[[Kernel, int], Awaitable[int]]


def _counted_row(kernel: Kernel, pid: int) -> str:
    [cap_id] = [c["id"] for c in kernel.capabilities(pid) if c["scope"] == "/data/pub/**"
                and c.get("uses") is not None]
    return cap_id


@pytest.mark.parametrize("how", list(HANDS))
async def test_a_parent_given_back_what_it_handed_on_is_refused(
        store_at: Path | str, fs_root: Path, how: str) -> None:
    hand, effect, handed = HANDS[how]
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=[counted(5, effect), OTHER, SPAWN])
        neighbour = kernel.spawn("agent", caps=[counted(2)])  # (spent honestly, below)
        cap_id = _counted_row(kernel, parent)
        child = await hand(kernel, parent)
        [row] = kernel.store._query("SELECT uses FROM capabilities WHERE id=?", (cap_id,))
        assert row["uses"] == 5 - handed
    edit(store_at, "UPDATE capabilities SET uses=5 WHERE id=?", (cap_id,))  # given back
    named = f"process {parent}'s capability {cap_id} (fs:/data/pub/**:read, {effect})"
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert cap_id not in {c["id"] for c in kernel.capabilities(parent)}
        with pytest.raises(NotCapable):  # neither read nor asked for: it holds nothing there
            await kernel.call_tool(parent, "read_file", READ)
        noted = anchor_problems(kernel)
        assert [p for p in noted if p.startswith(named) and "count was raised" in p], noted
        assert any(p.startswith(named) and "count was raised" in p
                   for p in kernel.verify_audit()[1])
        # The neighbours: a child reads with the uses it was handed, another process's
        # counted grant spends both its uses, and the parent's uncounted grant still reads
        # (an `ask` row left out leaves its process nothing: leaving out a rule that narrows
        # would widen).
        if child != parent:
            assert await kernel.call_tool(child, "read_file", READ) == "pub"
        for _ in range(2):
            assert await kernel.call_tool(neighbour, "read_file", READ) == "pub"
        if effect == "allow":
            assert await kernel.call_tool(parent, "read_file", OTHER_F) == "other"
        else:
            with pytest.raises(NotCapable):
                await kernel.call_tool(parent, "read_file", OTHER_F)
    verified = run("audit", "--verify", "--json", "--db", str(store_at))
    assert verified.returncode == 1, verified.stdout + verified.stderr
    problems = json.loads(verified.stdout)["problems"]
    assert [p for p in problems if p.startswith(named) and "count was raised" in p], problems


@pytest.mark.parametrize("how", list(HANDS))
async def test_an_honest_parent_keeps_what_it_did_not_hand_on(
        store_at: Path | str, fs_root: Path, how: str) -> None:
    """What it handed on is counted once: its row is not refused, and it spends exactly what
    it kept, across opens; the child spends what it was handed."""
    hand, effect, handed = HANDS[how]
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=[counted(5 if effect == "allow" else 2, effect),
                                               SPAWN])
        child = await hand(kernel, parent)
    clean = run("audit", "--verify", "--db", str(store_at))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert not [p for p in anchor_problems(kernel) if "count was raised" in p]
        if effect == "allow":
            for _ in range(5 - handed):
                assert await kernel.call_tool(parent, "read_file", READ) == "pub"
            for _ in range(handed):
                assert await kernel.call_tool(child, "read_file", READ) == "pub"
            with pytest.raises(NotCapable):
                await kernel.call_tool(child, "read_file", READ)
        else:  # (the ask row's last use, answered again)
            await approve_a_call(kernel, parent, "read_file", READ)
        with pytest.raises(NotCapable):
            await kernel.call_tool(parent, "read_file", READ)
        assert not [p for p in kernel.verify_audit()[1] if "count was raised" in p]
