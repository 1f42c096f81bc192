"""`libos audit` (and the CLI's other listings: caps, images, checkpoints, approvals) past
`render_long.LONG` rows: one plain line a row, as `libos ps` prints its table past them, not
rich's layout (about 0.5 ms a row: 4.8 s of CPU for `libos audit` at 10,000 records here,
0.47 s as plain lines). Each cell by `shown_cell`: a resource a tool chose, spaced to pass for
columns, is one quoted cell; a plain record reads as its values; `--json` is unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.text import Text

from broker import AgentImage, Kernel
from broker.cli import main as cli_main
from broker.render import approvals_table
from broker.render_long import LONG, LongTable
from broker.store import AuditRecord

SPACED = "/tmp/x  7  admin  host.kill"  # (a resource that would pass for three more columns)


async def test_a_long_audit_listing_is_a_line_a_record(
        db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Kernel.open(db_path) as kernel:
        await kernel.register_image(AgentImage("a", tools=("now",), needs=("clock:*:read",)))
        for i in range(LONG):
            kernel.store.append_audit(AuditRecord(phase="admin", syscall="note",
                                                  detail={"message": f"note {i}"}))
        kernel.store.append_audit(AuditRecord(phase="admin", syscall="note", resource=SPACED,
                                              detail={"message": "\x1b[2Jhostile"}))
    assert cli_main(["audit", "--db", str(db_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["seq", "pid", "tool", "phase", "syscall", "resource", "detail"]
    assert len(lines) == 1 + 1 + LONG + 1  # (the header; the image's record, the notes)
    assert not any("│" in line or "─" in line for line in lines)  # (no rich borders)
    assert re.fullmatch(r"3 +admin +note +note 1", lines[3])
    hostile = lines[-1]
    assert '"/tmp/x\\u00207\\u0020\\u0020admin\\u0020\\u0020host.kill"' not in hostile
    assert ' "/tmp/x\\u0020\\u00207\\u0020\\u0020admin\\u0020\\u0020host.kill"  ' in hostile
    assert hostile.endswith("\\u001b[2Jhostile") and "\x1b" not in hostile
    # The columns line up: each row's detail starts where the header's does.
    assert {line.rindex("note ") for line in lines[3:-1]} == {lines[0].index("detail")}
    assert cli_main(["audit", "--db", str(db_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[-1]["resource"] == SPACED


def test_a_long_approvals_listing_keeps_its_pointers() -> None:
    """A value too long for a cell is a pointer (`Text`) in rich's table; in the long form,
    the same words."""
    requests = [{"id": f"r{n}", "pid": 1, "tool": "t", "syscall": "fs.write", "labels": [],
                 "resource": "x" * 500, "reason": None, "question": None, "args": {},
                 "state": "pending"} for n in range(LONG + 1)]
    table = approvals_table(requests)
    assert isinstance(table, LongTable)
    assert table.lines[1][:5] == ["r0", "1", "t", "fs.write",
                                  "(500 characters, not shown here: libos approvals show r0)"]
    assert isinstance(approvals_table(requests[:1]).columns[4]._cells[0], Text)  # type: ignore[union-attr]


def test_a_long_approvals_listing_never_cuts_a_value() -> None:
    """A reason short enough for a cell as `shown` shows it, but spaced: quoted in the long
    form (each space in a run `\\u0020`), it outgrew the cell and was cut with "…", a
    prefix to approve by (red team 25). It is whole, or the pointer; a plain one is whole."""
    spaced = "rm  -rf  /home/me  " * 6  # (114 characters; quoted, about 240)
    requests = [{"id": f"r{n}", "pid": 1, "tool": "t", "syscall": "fs.write", "labels": [],
                 "resource": "/tmp/a b", "reason": spaced, "question": None, "args": {},
                 "state": "pending"} for n in range(LONG + 1)]
    table = approvals_table(requests)
    assert isinstance(table, LongTable)
    resource, reason = table.lines[1][4:6]
    assert resource == "/tmp/a b"
    assert "…" not in reason
    assert reason == f"({len(spaced)} characters, not shown here: libos approvals show r0)"
