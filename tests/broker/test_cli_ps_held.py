"""Lane heldbits: `libos ps` showed a process held for an unsigned end (brokers sharing a
PostgreSQL store, `revived.Held`: no broker runs it nor ends it) as live, as it shows one
running. Now it says held, by which record, not run (the table and `--json`'s `held_by`),
as it says of a revived row `ended by` (and not `ended by` where a reader counts the
unsigned end as one: no anchor it can check; the brokers do not); a live neighbour is
shown as before, and once the host kills the held one it shows killed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker import Kernel
from broker.cli import main as cli_main
from broker.store.location import beside
from tests.broker.kernel.test_capability_shared_signed_redteam import fs  # noqa: F401
from tests.broker.kernel.test_held_redteam11 import _forge_end, _parent_and_child


def _ps(dsn: str, capsys: pytest.CaptureFixture[str]) -> tuple[dict[int, dict], str]:
    assert cli_main(["ps", "--json", "--db", dsn]) == 0
    rows = {p["pid"]: p for p in json.loads(capsys.readouterr().out)}
    assert cli_main(["ps", "--db", dsn]) == 0
    return rows, " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("no_anchor", [False, True], ids=["anchored", "no-anchor"])
async def test_ps_shows_a_held_process_as_held(
        pg_database: str, fs: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
        no_anchor: bool) -> None:
    parent, child = await _parent_and_child(pg_database, fs)
    forged = _forge_end(pg_database, parent)
    async with Kernel.open(pg_database, fs_root=fs, broker="b"):
        pass  # (a shared open: it notes the unsigned end, `caps.unsigned`)
    if no_anchor:  # (a reader with no anchor it can check counts every end, as before)
        Path(beside(pg_database, "anchor")).unlink()
    rows, shown = _ps(pg_database, capsys)
    state = rows[parent]["state"]
    assert rows[parent]["held_by"] == forged and "ended_by" not in rows[parent]
    assert "held_by" not in rows[child] and "ended_by" not in rows[child]
    assert f"{state}: held by unsigned record {forged}, not run" in shown
    assert "held by unsigned record N: a record past the chain's audit.signed marker" in shown
    assert f"{child} agent:1 {rows[child]['state']} " in shown  # (the neighbour, as before)
    async with Kernel.open(pg_database, fs_root=fs, broker="b") as kernel:
        kernel.kill(parent, "the host stops it")
    rows, shown = _ps(pg_database, capsys)
    assert rows[parent]["state"] == "killed" and "held_by" not in rows[parent]
    assert "held by unsigned record" not in shown
