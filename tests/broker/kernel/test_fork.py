"""Fork from a chosen checkpoint: processes keep as many checkpoints as the retention setting
says (and those an image was committed from); a fork from an older one sees the older state
(history, cwd, image, planner position) and the current capability table (a revocation since
stays). And host planners for children: a factory given at opening or per spawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from broker import Exit, Kernel, NotCapable, NotFound, ProcessLimits, ScriptedPlanner
from tests.conftest import open_image

SCRIPT = [
    {"tool": "write_file", "args": {"path": "/w/one", "data": "1"}},
    {"tool": "change_dir", "args": {"path": "/w"}},
    {"tool": "write_file", "args": {"path": "two", "data": "2"}},
    {"tool": "write_file", "args": {"path": "three", "data": "3"}},
    {"tool": "sleep", "args": {"seconds": 3600}},
    {"exit": 0, "result": "done"},
]


def fs_root(kernel: Kernel) -> Path:
    return Path(kernel.fs.root)  # type: ignore[attr-defined]


async def run_until_asleep(kernel: Kernel) -> int:
    await open_image(kernel, "job", planner={"kind": "scripted", "actions": SCRIPT})
    (fs_root(kernel) / "w").mkdir(exist_ok=True)
    pid = kernel.spawn("job", caps=["fs:/w/**:read,write", "clock:*:sleep"])
    with trio.fail_after(10):
        while kernel.process(pid).state.value != "waiting":
            await trio.sleep(0.01)
    return pid


async def test_a_fork_from_an_older_checkpoint_sees_the_older_state_and_new_revocations(
        kernel: Kernel) -> None:
    pid = await run_until_asleep(kernel)
    kept = kernel.checkpoints(pid)
    # Two per step (before it, with the step it is about to take; after it), the latest last.
    assert [c["step"] for c in kept] == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert kept[-1]["pending"] == "sleep" and kept[-1]["id"] == kernel.store.checkpoint(pid)[
        "id"]
    after_cd = next(c for c in kept if c["step"] == 2 and c["pending"] is None)
    assert after_cd["cwd"] == "/w" and after_cd["image"] == "job:1"

    # Since that checkpoint the host revoked the write capability.
    write = next(c["id"] for c in kernel.capabilities(pid) if c["kind"] == "fs")
    kernel.revoke(write)
    (fs_root(kernel) / "w" / "two").unlink()
    fork = kernel.fork(pid, checkpoint=after_cd["id"])
    child = kernel.process(fork)
    # The older state: two steps of history, its cwd, its planner's place in the script.
    assert [o.action.name for o in child.history] == ["write_file", "change_dir"]
    assert child.cwd == "/w" and child.parent == pid
    # The current table: the revoked write is not given, and cannot be asked for.
    assert {c["kind"] for c in kernel.capabilities(fork)} == {"clock", "obj"}
    with pytest.raises(NotCapable):
        kernel.fork(pid, checkpoint=after_cd["id"], caps=["fs:/w/**:write"])
    with trio.fail_after(10):
        while len(child.history) < 4:
            await trio.sleep(0.01)
    # It ran on from step 2: both writes refused (the revocation holds), nothing rewritten.
    assert [o.error["code"] for o in child.history[2:4]] == ["NOT_CAPABLE", "NOT_CAPABLE"]
    assert not (fs_root(kernel) / "w" / "two").exists()
    # The fork is in the chain: who, from which process and checkpoint.
    [record] = [r for r in kernel.audit(fork) if r["phase"] == "admin"]
    assert record["syscall"] == "host.fork"
    assert (record["detail"]["source"], record["detail"]["checkpoint"]) == (pid, after_cd["id"])
    # A checkpoint that is not this process's (or not kept) is NotFound.
    with pytest.raises(NotFound):
        kernel.fork(fork, checkpoint=after_cd["id"])
    kernel.kill(pid)


async def test_retention_keeps_the_latest_and_the_committed(db_path: Path) -> None:
    async with Kernel.open(db_path, process_limits=ProcessLimits(checkpoints=3)) as kernel:
        pid = await run_until_asleep(kernel)
        kept = kernel.checkpoints(pid)
        assert [c["step"] for c in kept] == [3, 4, 4]
        with pytest.raises(NotFound):
            kernel.fork(pid, checkpoint=kept[0]["id"] - 1)  # dropped by the retention
        kernel.commit_image(pid, "snapshot")  # pins the latest
        pinned = kernel.store.checkpoint(pid)["id"]
        kernel.checkpoint(pid)
        kernel.checkpoint(pid)
        kernel.checkpoint(pid)
        ids = [c["id"] for c in kernel.checkpoints(pid)]
        assert pinned in ids and len(ids) == 4
        assert kernel.image("snapshot").origin["committed_from"]["checkpoint"] == pinned
        fork = kernel.fork(pid, checkpoint=pinned)
        assert kernel.process(fork).rerun is not None  # the step it was about to take
        kernel.kill(pid)


# -- host planners for children ---------------------------------------------------------------

class Says:
    """A host planner: exits at once with what it was told to say."""

    def __init__(self, said: str) -> None:
        self.said = said

    async def next_action(self, history: Any) -> Exit:
        return Exit(0, self.said)


async def spawn_two(kernel: Kernel, parent: int) -> tuple[int, int]:
    hosted = await kernel.call_tool(parent, "spawn", {"image": "hosted"})
    modelled = await kernel.call_tool(parent, "spawn", {"image": "modelled"})
    return hosted, modelled


async def images(kernel: Kernel) -> None:
    await open_image(kernel, "parent", needs=("proc:*:spawn",), tools=("spawn", "wait"))
    await open_image(kernel, "hosted")  # no planner settings of its own
    await open_image(kernel, "modelled", planner={"kind": "scripted", "actions": [
        {"exit": 0, "result": "from the image"}]})


async def test_a_factory_given_at_opening_plans_for_children(db_path: Path) -> None:
    def planners(image: Any, pid: int) -> Any:
        return Says(f"host for {pid}") if image.name == "hosted" else None

    async with Kernel.open(db_path, planners=planners) as kernel:
        await images(kernel)
        parent = kernel.spawn("parent", caps=["proc:*:spawn"])
        hosted, modelled = await spawn_two(kernel, parent)
        assert (await kernel.wait(hosted, 5))["result"] == f"host for {hosted}"
        assert (await kernel.wait(modelled, 5))["result"] == "from the image"


async def test_a_factory_given_per_spawn_plans_for_that_processs_descendants(
        kernel: Kernel) -> None:
    await images(kernel)
    seen: list[int] = []

    def children(image: Any, pid: int) -> Any:
        seen.append(pid)
        return Says("per spawn") if image.name == "hosted" else None

    parent = kernel.spawn("parent", caps=["proc:*:spawn"], children=children)
    other = kernel.spawn("parent", caps=["proc:*:spawn"])
    hosted, modelled = await spawn_two(kernel, parent)
    assert (await kernel.wait(hosted, 5))["result"] == "per spawn"
    assert (await kernel.wait(modelled, 5))["result"] == "from the image"
    assert seen == [hosted, modelled]
    # Another process's children are not its to plan: the hosted one has no planner (the
    # host drives it through call_tool, or attaches one).
    hosted2, _ = await spawn_two(kernel, other)
    await trio.testing.wait_all_tasks_blocked()
    assert kernel.process(hosted2).planner is None and kernel.process(hosted2).alive
    kernel.attach(hosted2, ScriptedPlanner([Exit(0, "attached")]))
    assert (await kernel.wait(hosted2, 5))["result"] == "attached"
    assert seen == [hosted, modelled]
