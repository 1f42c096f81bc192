"""Red team 10 on lane loose's 5296cce: `libos ps` shows a revived row as the kernel treats
it, by the kernel's look-up (`revived.recorded_ends`), read without the writer's key.

1. (Fixed: the reader counts as the anchor vouches.) The other direction of the gap its note
   names, and without the note. A database writer
   who holds no key revives a killed row and appends, past the signed head, intact refusals
   that take its ends back: `ps` shows it plainly `runnable` (no `ended_by`, no note), while
   the broker refuses to run it. Severity: low (a display; the broker holds). What the
   writer gains: an operator told a process runs that the broker will not run, with nothing
   on the page saying the count was read without the key (the note shows only for ends).
2. Cost. `ps` read the processes table; now it walks the whole audit chain on every run
   (a reader keeps no walk), with no live row too, where there is nothing to look up.
   About 13 µs a record here: a chain of 10 million records (a long-lived broker's syscalls,
   two records each) is two minutes of `ps`. Severity: low (the operator's tool slowed by
   any process's ordinary use, not blocked). Fixed where no row says live (nothing to look
   up: the walk is skipped); with one, expected to fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import AgentImage, Conflict, Kernel
from broker.cli import main as cli_main
from broker.store import AuditRecord
from tests.broker.kernel import test_capability_links_redteam as links
from tests.broker.kernel.test_capability_links_redteam import PUB
from tests.broker.kernel.test_capability_rows_vouched_redteam import edit
from tests.broker.kernel.test_ends_unvouched_redteam5 import append_past_head
from tests.broker.kernel.test_process_revived_redteam import REVIVE
from tests.broker.test_cli_ps_walk_memory import count_reads
from tests.conftest import open_image

fs_root = links.fs_root  # (a tree with pub, other and secret, each holding f)


@pytest.mark.parametrize("noted", [False, True], ids=["past-the-head", "noted-since"])
async def test_ps_does_not_show_runnable_a_row_the_broker_refuses(
        store_at: Path | str, fs_root: Path, capsys: pytest.CaptureFixture[str],
        noted: bool) -> None:
    """(1, fixed) The reader counts only what the signed anchor vouches for, as the broker's
    next open does (`anchored_reads`): a take-back forged past it takes nothing back, and
    the page says records lie past it; nor does one a writer's open noted since
    (`caps.unvouched`: under the anchor now)."""
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:
        await open_image(kernel)
        pid = kernel.spawn("agent", caps=[PUB])
        neighbour = kernel.spawn("agent", caps=[PUB])
        kernel.kill(pid)
    edit(store_at, REVIVE, (pid,))
    for syscall, detail in (("proc.signal", {"signal": "kill", "error": "CONFLICT"}),
                            ("proc.end", {"message": "its end was not stored"})):
        append_past_head(store_at, AuditRecord(phase="rejected", syscall=syscall, pid=pid,
                                               detail=detail))
    if noted:  # (a writer's open notes what lies past the anchor, and signs past it)
        edit(store_at, "UPDATE processes SET reason=reason WHERE pid=?", (pid,))
    assert cli_main(["ps", "--json", "--db", str(store_at)]) == 0
    rows = {p["pid"]: p for p in json.loads(capsys.readouterr().out)}
    assert cli_main(["ps", "--db", str(store_at)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    async with Kernel.open(store_at, fs_root=fs_root) as kernel:  # the broker: not run
        with pytest.raises(Conflict):
            await kernel.call_tool(pid, "read_file", {"path": "/data/pub/f"})
        assert await kernel.call_tool(neighbour, "read_file", {"path": "/data/pub/f"}) == "pub"
    assert "ended_by" not in rows[neighbour]
    assert rows[pid].get("ended_by") is not None, rows[pid]  # (ps: runnable, nothing said)
    assert f"{pid} agent:1 runnable: ended by record {rows[pid]['ended_by']}, not run" in shown
    # (the second only: the open that appended it noted the first, `caps.unvouched`)
    assert ("1 audit record(s) past the signed anchor are not counted here" in shown) != noted


@pytest.mark.parametrize("live", [False, True], ids=["no-live-row", "a-live-row"])
async def test_ps_does_not_read_the_whole_chain(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        live: bool) -> None:
    """(2) Fixed where no row says live (no walk); with one, the walk a first `ps` made is
    kept (`walk_memory`): the next reads only the records appended since."""
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        pid = kernel.spawn("a", caps=["clock:*:read"])
        for i in range(3000):  # (any process's syscalls grow it two records each)
            kernel.store.append_audit(AuditRecord(phase="admin", syscall="note",
                                                  detail={"i": i}))
        if not live:
            kernel.kill(pid)
    assert cli_main(["ps", "--db", str(db_path)]) == 0  # (a first: it walks it whole)
    first = capsys.readouterr().out
    async with Kernel.open(db_path) as kernel:  # (records since, under the anchor)
        for i in range(10):
            kernel.store.append_audit(AuditRecord(phase="admin", syscall="note",
                                                  detail={"i": i}))
    read = count_reads(monkeypatch)
    assert cli_main(["ps", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert f"{pid} a:1 {'runnable' if live else 'killed'}" in out
    assert out == first
    assert read[0] < 100, read[0]
