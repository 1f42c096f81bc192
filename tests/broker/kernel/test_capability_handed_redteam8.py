"""Red team 8 on the uses a parent hands on (invariant 15, invariant 5): what lane handed's
`cap_handed` still lets a writer without the key give back, or take away."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from broker import Kernel, NotCapable
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.crashing import Crash, crash_after, outcome_of
from tests.broker.kernel.test_capability_handed_redteam import READ, SPAWN, counted
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.conftest import anchor_problems, open_image

fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


async def _reads(kernel: Kernel, pid: int, most: int) -> int:
    """How many reads `pid` gets, trying up to `most`."""
    done = 0
    for _ in range(most):
        try:
            await kernel.call_tool(pid, "read_file", READ)
        except NotCapable:
            break
        done += 1
    return done


async def _spawn_cut_by_a_crash(db_path: Path, fs_root: Path) -> tuple[int, str]:
    """A parent with 5 counted uses spawns a child handed 2 of them; the broker dies just
    before the `proc.spawn` outcome (which carries `cap_handed`) is written: the parent's
    row was stored with 3 in the grant's own transaction, before. Returns (parent, row)."""
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=[counted(5), SPAWN])
        [cap_id] = [c["id"] for c in kernel.capabilities(parent) if c.get("uses") == 5]
    undo = crash_after("append_audit", outcome_of("proc.spawn"), before=True)
    try:
        with pytest.raises(BaseException) as caught:  # (trio wraps it in a group)
            async with Kernel.open(db_path, fs_root=fs_root) as kernel:
                await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [counted(2)]})
                await trio.sleep(10)
        assert caught.group_contains(Crash) if isinstance(caught.value, BaseExceptionGroup) \
            else isinstance(caught.value, Crash)
    finally:
        undo()
    return parent, cap_id


async def test_a_hand_on_a_crash_cut_off_is_not_given_back(db_path: Path,
                                                           fs_root: Path) -> None:
    """Severity medium (needs a crash in the window and a writer): the parent's row holds 3
    after the crash; the writer sets it to 5 and the next open takes 5 as vouched (granted 5,
    nothing recorded spent), so the parent spends 5, and with the 2 the child may have
    spent before the crash, 7 of a grant of 5: counted authority multiplied."""
    parent, cap_id = await _spawn_cut_by_a_crash(db_path, fs_root)
    [row] = _uses(db_path, cap_id)
    assert row == 3  # (the hand-on is durable, and so is its record, in its transaction)
    assert _handed_records(db_path, cap_id) == [2]
    edit(db_path, "UPDATE capabilities SET uses=5 WHERE id=?", (cap_id,))  # given back
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        raised = [p for p in anchor_problems(kernel) if cap_id in p]
        assert raised or await _reads(kernel, parent, 5) <= 3


async def test_a_spawn_cut_off_leaves_the_parent_what_it_kept(db_path: Path,
                                                              fs_root: Path) -> None:
    """The neighbour: no writer, the parent keeps the 3 uses it did not hand on."""
    parent, cap_id = await _spawn_cut_by_a_crash(db_path, fs_root)
    async with Kernel.open(db_path, fs_root=fs_root) as kernel:
        assert not [p for p in anchor_problems(kernel) if cap_id in p]
        assert await _reads(kernel, parent, 5) == 3


def _handed_records(db_path: Path, cap_id: str) -> list[int]:
    """The uses of `cap_id` the chain's `proc.spawn` hand-on records name."""
    import json
    import sqlite3
    with sqlite3.connect(db_path) as db:
        rows = db.execute("SELECT detail FROM audit WHERE syscall='proc.spawn' AND phase='admin'"
                          ).fetchall()
    db.close()
    return [json.loads(d).get("cap_handed", {}).get(cap_id) for (d,) in rows]


def _uses(db_path: Path, cap_id: str) -> list[int]:
    import sqlite3
    with sqlite3.connect(db_path) as db:
        return [r[0] for r in db.execute("SELECT uses FROM capabilities WHERE id=?", (cap_id,))]


async def test_a_hand_on_past_a_replayed_anchor_is_not_given_back(store_at: Path | str,
                                                                  fs_root: Path) -> None:
    """Severity low to medium (a writer of the database and its lock file who kept an older
    copy of the lock file; no crash needed; one who also cuts the records since off the
    chain rolls it back, which DESIGN §9 says is not detected): the parent forks a child
    handed 2 of its 5 uses; the writer puts the lock file from before the fork back and the
    parent's count to 5. The
    child's grant past that anchor holds nothing, and the walk counted hand-ons only where
    the anchor vouches: the parent's 2 uses handed on came back (it read 5 times), while its
    own spends since, intents, counted. Now a hand-on counts wherever it lies: the row is
    refused, named and recorded."""
    parent, cap_id = await _forked_past_a_kept_lock_file(store_at, fs_root)
    edit(store_at, "UPDATE capabilities SET uses=5 WHERE id=?", (cap_id,))  # given back
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        raised = [p for p in anchor_problems(kernel) if cap_id in p]
        assert raised or await _reads(kernel, parent, 5) <= 3


async def test_an_honest_hand_on_past_the_anchor_leaves_the_parent_what_it_kept(
        store_at: Path | str, fs_root: Path) -> None:
    """The neighbour: the lock file put back, the count not touched: the parent's row is
    not refused (its hand-on past the anchor counted once) and it reads the 3 it kept."""
    parent, _ = await _forked_past_a_kept_lock_file(store_at, fs_root)
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert not [p for p in anchor_problems(kernel) if "count was raised" in p]
        assert await _reads(kernel, parent, 5) == 3


async def _forked_past_a_kept_lock_file(store_at: Path | str, fs_root: Path
                                        ) -> tuple[int, str]:
    """A parent granted 5 uses (the lock file kept once its broker closed: signed, genuine),
    then forked by the next broker with 2 of them; the kept lock file put back. Returns
    (parent, its counted row)."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=[counted(5), SPAWN])
        [cap_id] = [c["id"] for c in kernel.capabilities(parent) if c.get("uses") == 5]
        lock = Path(kernel.store._anchor_path)
    older = lock.read_bytes()
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        kernel.fork(parent, caps=[counted(2)])
        [row] = kernel.store._query("SELECT uses FROM capabilities WHERE id=?", (cap_id,))
        assert row["uses"] == 3
    lock.write_bytes(older)  # the lock file put back
    return parent, cap_id
