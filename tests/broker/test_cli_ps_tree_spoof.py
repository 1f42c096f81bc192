"""`libos ps`'s tree tells a label's fields apart by one space, and a label longer than the
terminal is wrapped (by rich's `Tree` up to `render_long.LONG` processes, by the terminal
itself past them): its next line starts with whatever the label holds there. A reason (or an
image) a database writer chose with lone spaces and a tree guide in it drew a node of its
own: `├── 3 a:1 exited (exit 0)` on a line of its own, under a process that is running, and
an image `a:1 exited` read as a state beside the real one (red team 25). In the tree a
writer's field with a blank in it is now quoted with no blank at all
(`broker.inert.shown_field`); a reason of plain ASCII words (`exit 0`) reads as before."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from broker import AgentImage, Kernel
from broker.cli import main as cli_main
from broker.inert import shown_field
from broker.render_long import LONG

WIDTH = 80


def _as_a_terminal_shows(lines: list[str]) -> list[str]:
    """Each line cut at `WIDTH` characters, as a terminal wraps it (these are all one cell
    wide)."""
    return [line[at:at + WIDTH] for line in lines for at in range(0, max(len(line), 1), WIDTH)]


@pytest.mark.parametrize("count", [5, LONG + 1])
async def test_a_reason_cannot_wrap_into_a_node_of_its_own(
        db_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        count: int) -> None:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        pids = [kernel.spawn("a", caps=["clock:*:read"]) for _ in range(count)]
        kernel.kill(pids[4], reason="killed by operator")  # (the neighbour: words as they are)
    victim, running, inline = pids[1], pids[2], pids[3]
    # "├── 2 " + 40 + ":1 runnable (" + 20 + " " is 80 characters: the guide starts a line.
    forged = f"├── {running} a:1 exited (exit 0"
    with sqlite3.connect(db_path) as db:  # (what anyone who writes the database can do)
        db.execute("UPDATE processes SET image=?, reason=? WHERE pid=?",
                   ("a" * 40, "x" * 20 + " " + forged, victim))
        db.execute("UPDATE processes SET version=? WHERE pid=?", ("1 exited", inline))
    assert cli_main(["ps", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    tree = out.split("\n┏")[0].split("\npid ")[0].splitlines()
    shown = _as_a_terminal_shows(tree)
    nodes = [line for line in shown if re.match(rf"[│ ]*[├└]── {running} ", line)]
    assert nodes == [f"├── {running} a:1 runnable"], shown
    assert not any(re.match(r"[│ ]*[├└]── \S+ \S+ exited", line) for line in shown), shown
    assert f"├── {inline} {shown_field('a:1 exited')} runnable" in tree
    assert shown_field("a:1 exited") == '"a:1\\u0020exited"'
    # The neighbours: a reason of plain words, a plain row.
    assert f"── {pids[4]} a:1 killed (killed by operator)" in "\n".join(tree)
    assert f"├── {pids[0]} a:1 runnable" in tree


@pytest.mark.parametrize(("value", "prose", "field"), [
    ("a:1", False, "a:1"), (7, False, "7"), (None, False, ""),
    ("exit 0", True, "exit 0"), ("exit 0", False, '"exit\\u00200"'),
    ("x ├── 3", True, '"x\\u0020├──\\u00203"'),  # (a guide: no blank beside it)
    ("x +-- 3", True, '"x\\u0020+--\\u00203"'), ("a|b", True, "a|b"),
    ("a  b", True, '"a\\u0020\\u0020b"'), ('"e"', False, '"\\"e\\""'),
])
def test_shown_field(value: object, prose: bool, field: str) -> None:
    assert shown_field(value, prose=prose) == field
