"""Red team on process rows beside the chain, by whoever can write the database but holds no
key. A process ends on the record (the host kills it: a `proc.signal` admin record; its
parent kills it: `proc.signal`'s ok outcome; the host ends it: `host.exit`); its row is set
ended and its capability rows stay (for lineage). A writer who set the row back to runnable
had it served again at the next open, with every grant its records vouch for. Now the open
(as any load of it: `recovery.reload`) ends it again and records that once, `libos audit
--verify` names the row, and a neighbour runs on; a process paused and resumed is no end.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from broker import Conflict, InvalidArgument, Kernel
from broker.cli import main as cli_main
from broker.kernel.revived import Revived
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.faulty_store import Fault
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.store.conftest import raw
from tests.conftest import open_image

fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)
REVIVE = "UPDATE processes SET state='runnable', reason=NULL, exit_code=NULL WHERE pid=?"


async def _host_kill(kernel: Kernel, pid: int) -> None:
    kernel.kill(pid)


async def _host_exit(kernel: Kernel, pid: int) -> None:
    kernel.exit(pid, 3, "done")


async def _parent_kill(kernel: Kernel, pid: int) -> None:
    parent = kernel.process(pid).parent
    await kernel.call_tool(parent, "signal", {"pid": pid, "signal": "kill"})


ENDS: dict[str, Callable[[Kernel, int], Awaitable[None]]] = {
    "host kill": _host_kill, "host.exit": _host_exit, "parent's proc.signal": _parent_kill}


def _revived_notes(kernel: Kernel, pid: int) -> list[Any]:
    return [r["detail"]["problem"] for r in kernel.audit() if r["syscall"] == "audit.anchor"
            and str(r["detail"].get("problem", "")).startswith(f"process {pid} was ended")]


@pytest.mark.parametrize("end", list(ENDS))
async def test_a_process_ended_on_the_record_set_runnable_again_stays_dead(
        store_at: Path | str, fs_root: Path, end: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=[PUB, "proc:agent:spawn"])
        pid = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [PUB]})
        neighbour = kernel.spawn("agent", caps=[PUB])
        await ENDS[end](kernel, pid)
        assert not kernel.process(pid).alive
    edit(store_at, REVIVE, (pid,))
    assert cli_main(["audit", "--verify", "--json", "--db", str(store_at)]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [p for p in problems if p.startswith(f"process {pid}: its row says it is live")
            ], problems
    await stays_dead(store_at, fs_root, pid, neighbour)


async def stays_dead(store_at: Path | str, fs_root: Path, pid: int, neighbour: int) -> None:
    """`pid`, ended on the record and its row set runnable: the next open ends it again,
    records that once (not again at the open after), and `neighbour` runs on."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
        with pytest.raises(Conflict):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert kernel.process(pid).state.value == "killed"
        assert len(_revived_notes(kernel, pid)) == 1
        assert any(p.startswith("record ") and f"process {pid} was ended" in p
                   for p in kernel.verify_audit()[1])
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:  # recorded once
        assert len(_revived_notes(kernel, pid)) == 1
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_a_process_paused_and_resumed_is_no_end(store_at: Path | str,
                                                      fs_root: Path) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        kernel.pause(pid)
        kernel.resume(pid)
        with pytest.raises(InvalidArgument):  # a host.exit refused: no end either
            kernel.exit(pid, 2**40)
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        assert _revived_notes(kernel, pid) == []
        assert kernel.verify_audit()[1] == []


async def test_a_child_killed_with_its_parent_set_runnable_again_stays_dead(
        store_at: Path | str, fs_root: Path) -> None:
    """A tree kill records only its root: the child is ended by it as the chain's lineage
    has it (its row's parent edited away too); a fork of the killed parent, made after the
    kill, is no child the kill ended: it runs."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        parent = kernel.spawn("agent", caps=[PUB, "proc:agent:spawn"])
        child = await kernel.call_tool(parent, "spawn", {"image": "agent", "caps": [PUB]})
        kernel.kill(parent)
        assert not kernel.process(child).alive
        fork = kernel.fork(parent)
    edit(store_at, REVIVE, (child,))
    edit(store_at, "UPDATE processes SET parent=NULL WHERE pid=?", (child,))
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert await kernel.call_tool(fork, "read_file", {"path": "/data/pub/f"}) == "pub"
        with pytest.raises(Conflict):
            await kernel.call_tool(child, "read_file", {"path": "/data/pub/f"})
        assert len(_revived_notes(kernel, child)) == 1
        assert _revived_notes(kernel, fork) == []


async def test_a_process_revived_while_a_kernel_runs_is_refused_when_looked_up(
        store_at: Path | str, fs_root: Path) -> None:
    """Not live at the open (not loaded then), set runnable while the kernel runs: the first
    look-up by pid ends it again, records it, and raises typed."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        neighbour = kernel.spawn("agent", caps=[PUB])
        kernel.kill(pid)
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        with raw(store_at) as db:  # (behind the running broker's back)
            db.execute(REVIVE, (pid,))
        with pytest.raises(Revived):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        with pytest.raises(Conflict):  # ended, as its row now says
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert len(_revived_notes(kernel, pid)) == 1
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"


async def test_a_host_kill_the_store_refused_is_no_end(store_at: Path | str,
                                                       fs_root: Path) -> None:
    """The kill's process rows fail: its record, written with them, is not written either
    (lane loose; it was written before them, then taken back), its `rejected` record takes
    nothing back, and the process, live as stored, runs at the next open."""
    with Fault(store_at) as fault:
        async with Kernel.open(store_at, fs_root=fs_root) as kernel:
            await open_image(kernel)
            fault.install(updates=("processes",))
            pid = kernel.spawn("agent", caps=[PUB])
            fault.set(True)
            with pytest.raises(Conflict):
                kernel.kill(pid)
            fault.set(False)
            assert kernel.process(pid).alive
            assert [r["phase"] for r in kernel.audit() if r["syscall"] == "proc.signal"
                    ] == ["rejected"]
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        assert await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"}) == "pub"
        assert _revived_notes(kernel, pid) == []
        assert kernel.verify_audit()[1] == []
