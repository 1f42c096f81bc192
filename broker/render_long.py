"""Long listings for people: a tree or a table of thousands of rows as plain aligned lines.

rich lays a `Table` or a `Tree` out cell by cell (measuring, wrapping and padding each): about
a millisecond a row, 10 s of CPU for `libos ps` at 10,000 processes (4.8 s for `libos audit`
at 10,000 records; every CLI listing goes through `render._table`). Past `LONG` rows these
draw one line a row instead (a tree with rich's guides, a table's columns padded to their
widest cell, no borders, nothing wrapped or cut by the terminal's width), a few microseconds
a row. Every cell is shown by the rendering rule (`broker.inert`), never markup; a table's
cell whose text could pass for the spaces between two columns (a run of blanks, an NBSP, a
blank at an end) is quoted, as a JSON string (`broker.inert.shown_cell`): a name a writer
chose cannot draw a column or a state of its own. Print them with `soft_wrap=True` (not
cropped to the terminal's width: a line a terminal wraps loses nothing): `printed`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from rich.tree import Tree

from broker.inert import shown_cell

LONG = 200  # rows: up to here the rich forms (a fraction of a second), past it these
_BOLD = Style(bold=True)


@dataclass(frozen=True)
class Node:
    """A tree's row: its key, its parent's key (a parent not drawn before it: under the
    root, as `render.tree` places it) and its label."""

    key: int
    parent: int | None
    label: Text


class LongTree:
    """A tree, one line a node, drawn with rich's guides (ASCII ones where the console
    is ASCII only), each node's label on a single line."""

    def __init__(self, root: str, nodes: Iterable[Node]) -> None:
        self.root = root
        self.children: dict[int | None, list[Node]] = {None: []}
        for node in nodes:  # (in the order `render.tree` adds them)
            parent = node.parent if node.parent in self.children else None
            self.children[parent].append(node)
            self.children[node.key] = []

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        space, down, fork, end = Tree.ASCII_GUIDES if options.ascii_only else Tree.TREE_GUIDES[0]
        yield Segment(self.root)
        # Depth first without recursion (a chain of forks can be thousands deep).
        stack: list[tuple[str, list[Node], int]] = [("", self.children[None], 0)]
        while stack:
            prefix, siblings, at = stack.pop()
            if at == len(siblings):
                continue
            node, last = siblings[at], at == len(siblings) - 1
            stack.append((prefix, siblings, at + 1))
            yield Segment.line()
            yield Segment(prefix + (end if last else fork))
            yield from node.label.render(console)
            stack.append((prefix + (space if last else down), self.children[node.key], 0))
        yield Segment.line()


class LongTable:
    """A header (bold) and one line a row, each column padded to its widest cell (in
    terminal cells), two spaces between columns. Each cell is a value as `shown_cell` shows
    it (cut past `limit` characters; None: empty)."""

    def __init__(self, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                 limit: int | None = None, title: str | None = None) -> None:
        self.title = title  # (the caller's words, above the header)
        self.lines = [list(columns), *([shown_cell(v, limit) for v in row] for row in rows)]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.title is not None:
            yield Segment(self.title, _BOLD)
            yield Segment.line()
        cells = [[(cell, _cells(cell)) for cell in row] for row in self.lines]
        widths = [max(n for _, n in column) for column in zip(*cells, strict=True)]
        for n, row in enumerate(cells):
            padded = [cell + " " * (width - used + 2)
                      for (cell, used), width in zip(row[:-1], widths, strict=False)]
            line = ("".join(padded) + row[-1][0]).rstrip(" ")
            yield Segment(line, _BOLD if n == 0 else None)
            yield Segment.line()


def _cells(text: str) -> int:
    """How many terminal cells `text` takes (inert text: ASCII is printable, one each)."""
    return len(text) if text.isascii() else cell_len(text)


def printed(console: Console, renderable: Any) -> None:
    """Print `renderable`; a long form whole (`soft_wrap`: not cropped to the width)."""
    console.print(renderable, soft_wrap=isinstance(renderable, (LongTable, LongTree)))
