"""Lane loose: `libos ps` showed a revived row (a process the chain records ended, its row set
runnable again by whoever writes the database) as live, though the kernel refuses to run it.
Now it says what the kernel does: ended by that record, not run (the kernel's own look-up,
`revived.recorded_ends`), with a note that a reader counts ends without the writer's key; a
live neighbour is shown as before, and the kernel then refuses the row as `ps` said."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Kernel
from broker.cli import main as cli_main
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_process_revived_redteam import REVIVE, stays_dead
from tests.conftest import open_image

fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


async def test_ps_shows_a_revived_row_as_the_kernel_treats_it(
        store_at: Path | str, fs_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        neighbour = kernel.spawn("agent", caps=[PUB])
        kernel.kill(pid)
        [end] = [r["seq"] for r in kernel.audit() if r["syscall"] == "proc.end"
                 and r["pid"] == pid]
    edit(store_at, REVIVE, (pid,))
    assert cli_main(["ps", "--json", "--db", str(store_at)]) == 0
    rows = {p["pid"]: p for p in json.loads(capsys.readouterr().out)}
    assert rows[pid]["state"] == "runnable" and rows[pid]["ended_by"] <= end
    assert rows[neighbour]["state"] == "runnable" and "ended_by" not in rows[neighbour]
    assert cli_main(["ps", "--db", str(store_at)]) == 0
    shown = capsys.readouterr().out
    assert f"{pid} agent:1 runnable: ended by record {rows[pid]['ended_by']}, not run" in shown
    assert f"{neighbour} agent:1 runnable\n" in shown
    assert "Read without the writer's key" in " ".join(shown.split())
    await stays_dead(store_at, fs_root, pid, neighbour)  # as `ps` said: not run
