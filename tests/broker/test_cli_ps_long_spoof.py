"""`libos ps` past `render_long.LONG` processes prints its table as columns told apart by
spaces alone: a name a database writer chose (an image, a kill's reason) with a run of
spaces, an NBSP or an ideographic space in it drew columns of its own there (a forged state
`running` beside a real pid), or, a long run wrapped by the terminal, a line that looks like
a row. Such a cell is now one quoted JSON string (`broker.inert.shown_cell`) with no blank
but lone spaces; a plain row reads as before, and `--json` gives every value as it is."""

from __future__ import annotations

import itertools
import json
import re
import sqlite3
from pathlib import Path

import pytest

from broker import AgentImage, Kernel
from broker.cli import main as cli_main
from broker.inert import shown_cell
from broker.render_long import LONG
from tests.broker.corpus import assert_inert

USAGE = '{"steps": 0, "tool_calls": 0, "syscalls": 0, "log_bytes": 0}'
COLUMNS = ["pid", "parent", "image", "state", "reason", "exit", "usage", "label"]


def _cells(header: str, line: str) -> list[str]:
    """A plain line cut at the header's column starts (ASCII lines: a character a cell)."""
    starts = [header.index(name) for name in COLUMNS] + [None]
    return [line[a:b].strip(" ") for a, b in itertools.pairwise(starts)]


async def test_a_cell_cannot_draw_columns_or_a_row_of_its_own(
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        pids = [kernel.spawn("a", caps=["clock:*:read"]) for _ in range(LONG + 1)]
        kernel.kill(pids[1], reason="stopped  running  0")  # (spaces: a state and a code)
    plain, killed, nbsp, wrapped, wide, quote = pids[0], *pids[1:6]
    forged_row = f"{pids[9]}  {plain}  a:1  running"  # (a line that looks like a row)
    images = {nbsp: "b\u00a0\u00a0running\u00a0\u00a0", wrapped: "c" + " " * 150 + forged_row,
              wide: "d\u3000running\u2800", quote: '"e"'}
    with sqlite3.connect(db_path) as db:  # (what anyone who writes the database can do)
        for pid, image in images.items():
            db.execute("UPDATE processes SET image=? WHERE pid=?", (image, pid))
    assert cli_main(["ps", "--db", str(db_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("pid "))
    table = {int(line.split()[0]): line for line in lines[header + 1:]}
    assert sorted(table) == pids
    for pid, image in images.items():
        row = _cells(lines[header], table[pid])
        assert row == [str(pid), "", shown_cell(f"{image}:1", 120), "runnable", "", "", USAGE,
                       "public"], table[pid]
        assert row[2].startswith('"') and row[2].endswith('"')
    assert _cells(lines[header], table[killed])[3:5] == ["killed",
                                                         '"stopped\\u0020\\u0020running'
                                                         '\\u0020\\u00200"']
    out = "\n".join(lines)
    assert forged_row not in out and "\u00a0" not in out and "\u3000" not in out
    # Every line's blanks are plain spaces; a run of them is the space between two columns.
    assert not any(re.search(r"[^\S ]|\u2800", line) for line in lines)
    states = {_cells(lines[header], line)[3] for line in table.values()}
    assert states == {"runnable", "killed"}
    # The tree: each field one word, or quoted.
    assert f'├── {nbsp} "b\\u00a0\\u00a0running\\u00a0\\u00a0:1" runnable' in lines
    assert f'├── {quote} "\\"e\\":1" runnable' in lines
    # The neighbours: plain rows read as before, in the tree and in the table.
    assert f"├── {plain} a:1 runnable" in lines
    assert _cells(lines[header], table[plain]) == [str(plain), "", "a:1", "runnable", "", "",
                                                   USAGE, "public"]
    assert re.fullmatch(rf"{plain} +a:1 +runnable +{re.escape(USAGE)}  public", table[plain])
    # `--json`: every value as it is.
    assert cli_main(["ps", "--db", str(db_path), "--json"]) == 0
    rows = {p["pid"]: p for p in json.loads(capsys.readouterr().out)}
    assert {pid: rows[pid]["image"] for pid in images} == images
    assert rows[killed]["reason"] == "stopped  running  0"


@pytest.mark.parametrize(("value", "limit", "cell"), [
    ("a:1", None, "a:1"), ("held by unsigned record 5, not run", None,
                           "held by unsigned record 5, not run"),
    (None, None, ""), (7, None, "7"),
    ("a  b", None, '"a\\u0020\\u0020b"'), (" a", None, '"\\u0020a"'),
    ("a\tb", None, "a\\tb"),  # (a tab is shown as an escape: no blank)
    ('a"  \\', None, '"a\\"\\u0020\\u0020\\\\"'),
    ("x\u2007y", None, '"x\\u2007y"'),
    ("a  bcdefgh", 8, '"a\\u0020…"'),  # (a cut keeps an escape whole: none half shown)
])
def test_shown_cell(value: object, limit: int | None, cell: str) -> None:
    assert shown_cell(value, limit) == cell


def test_a_quoted_cell_is_inert_has_lone_spaces_only_and_reads_back_as_json() -> None:
    """Every code point of the Basic Multilingual Plane, in runs of spaces: the rule's
    escapes, no blank but a lone space, and (its escapes being JSON's there) the value whole
    as JSON reads it back."""
    raw = "  " + "  ".join(map(chr, range(0x10000))) + " "
    cell = shown_cell(raw)
    assert_inert(cell, layout="")
    assert cell.startswith('"') and cell.endswith('"')
    assert not re.search(r"[^\S ]|\u2800|  ", cell)
    assert json.loads(cell) == raw
