"""Red team 10 on lane loose's 5296cce (`libos ps`, invariant 13: output a person reads is
inert): the process tree `ps` prints above its table wrote a row's image, version and state
as they were, so a database writer's terminal escapes reached the operator's terminal raw
(CSI: clear the screen, recolour; OSC: set the window title; and `ps` shows a revived row's
state with its note). The table below it was inert; the tree was not. Severity: medium for
a display (a forged screen: a process shown as another image, or a state painted over).
Now the tree shows each field by the rule too; a plain row reads as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from broker import AgentImage, Kernel
from broker.cli import main as cli_main

HOSTILE = ("runnable\x1b[2J\x1b]0;pwned\x07", "a\x1b[31mEVIL", "1\u202e\x1b[0m")


async def test_the_ps_tree_shows_a_rows_fields_inert(
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        pid = kernel.spawn("a", caps=["clock:*:read"])
        neighbour = kernel.spawn("a", caps=["clock:*:read"])
    with sqlite3.connect(db_path) as db:  # (what anyone who writes the database can do)
        db.execute("UPDATE processes SET state=?, image=?, version=? WHERE pid=?",
                   (*HOSTILE, pid))
    assert cli_main(["ps", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert f"{pid} a\\u001b[31mEVIL:1\\u202e\\u001b[0m runnable\\u001b[2J" in out
    assert f"{neighbour} a:1 runnable\n" in out  # the neighbour: as before
