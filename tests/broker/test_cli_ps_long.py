"""`libos ps` past `render_long.LONG` processes: one line a process, in the tree and in the
table (rich's layout costs about a millisecond a row: 10 s of CPU at 10,000 processes;
`python -m bench.ps_bench --ended N`), each field as inert as the rich forms show it
(invariant 13), nothing cut or folded at the terminal's width."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from broker import AgentImage, Kernel
from broker.cli import main as cli_main
from broker.render_long import LONG, LongTree, Node

USAGE = '{"steps": 0, "tool_calls": 0, "syscalls": 0, "log_bytes": 0}'
HOSTILE_IMAGE = "a\x1b[31mEVIL[bold]x[/bold]"  # (a CSI, and rich markup that must stay text)
WIDE_IMAGE = "画像"  # two terminal cells a character: the columns still line up


async def test_ps_past_long_prints_a_line_a_process_inert_and_aligned(
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        pids = [kernel.spawn("a", caps=["clock:*:read"]) for _ in range(LONG + 1)]
        kernel.kill(pids[1], reason="stopped\x1b]0;pwned\x07\u202e")
    hostile, wide, child = pids[2], pids[3], pids[-1]
    with sqlite3.connect(db_path) as db:  # (what anyone who writes the database can do)
        db.execute("UPDATE processes SET parent=? WHERE pid=?", (pids[0], child))
        db.execute("UPDATE processes SET image=? WHERE pid=?", (HOSTILE_IMAGE, hostile))
        db.execute("UPDATE processes SET image=? WHERE pid=?", (WIDE_IMAGE, wide))
    assert cli_main(["ps", "--db", str(db_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    lines = out.splitlines()
    # The tree: a line a process, a child under its parent.
    assert lines[0] == "processes"
    assert f"├── {pids[0]} a:1 runnable" in lines
    assert f"│   └── {child} a:1 runnable" in lines
    assert (f"├── {pids[1]} a:1 killed (stopped\\u001b]0;pwned\\u0007\\u202e)" in lines)
    assert f"├── {hostile} a\\u001b[31mEVIL[bold]x[/bold]:1 runnable" in lines
    # The table: its header, then a line a process, every cell whole on it.
    headers = [n for n, line in enumerate(lines) if line.startswith("pid ")]
    assert len(headers) == 1, "no plain header line: a rich table"
    table = lines[headers[0]:]
    assert table[0].split() == ["pid", "parent", "image", "state", "reason", "exit", "usage",
                                "label"]
    assert len(table) == 1 + LONG + 1 and len(lines) == 1 + (LONG + 1) + len(table)
    rows = {int(line.split()[0]): line for line in table[1:]}
    assert sorted(rows) == pids
    assert all(USAGE in row and row.endswith("public") for row in rows.values())
    assert "  a\\u001b[31mEVIL[bold]x[/bold]:1  runnable  " in rows[hostile]
    assert f"  {WIDE_IMAGE}:1  " in rows[wide]
    assert "stopped\\u001b]0;pwned\\u0007\\u202e" in rows[pids[1]]
    assert f" {pids[0]} " in rows[child]  # (its parent)
    # Aligned in terminal cells, a wide image's row too.
    at = {cell_len(line[:line.index(USAGE)]) for line in rows.values()}
    assert at == {cell_len(table[0][:table[0].index("usage")])}


def _drawn(renderable: object, *, ascii_only: bool = False) -> str:
    class File(io.StringIO):
        encoding = "ascii" if ascii_only else "utf-8"

    console = Console(file=File(), width=200, color_system=None)
    console.print(renderable, soft_wrap=True)
    return console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.parametrize("ascii_only", [False, True])
def test_a_long_tree_draws_as_richs_tree_draws(ascii_only: bool) -> None:
    """Nesting, a last child's guides, a parent not drawn before its child (under the root,
    as `render.tree` places it): line for line what rich's `Tree` prints where it fits."""
    nodes = [Node(1, None, Text("one")), Node(2, 1, Text("two")), Node(3, 2, Text("three")),
             Node(4, 2, Text("four")), Node(5, 1, Text("five")), Node(6, 99, Text("six")),
             Node(7, 6, Text("seven"))]
    root = Tree("processes")
    added: dict[int, Tree] = {}
    for node in nodes:
        added[node.key] = added.get(node.parent, root).add(node.label)  # type: ignore[arg-type]
    expected = _drawn(root, ascii_only=ascii_only)
    assert ("`-- " in expected) == ascii_only  # (rich's ASCII guides where they apply)
    assert _drawn(LongTree("processes", nodes), ascii_only=ascii_only) == expected
