"""Reading the SQL a store ran (`sqlite3.Connection.set_trace_callback`): the audit rows an
INSERT wrote, one statement holding one row or many."""

from __future__ import annotations

import re

# (seq, ts, pid, inv, tool, 'phase', 'syscall', ...: one row of an audit INSERT, as traced
_ROW = re.compile(r"\((\d+),([^,]*),([^,]*),([^,]*),([^,]*),'([^']*)','([^']*)'")


def audit_inserts(sql: str) -> list[str]:
    """`phase syscall` of each row an audit INSERT writes (none for another statement)."""
    if not sql.startswith("INSERT INTO audit"):
        return []
    values = sql.split(" VALUES ", 1)[1]
    return [f"{m.group(6)} {m.group(7)}" for m in _ROW.finditer(values)]


def audit_rows(sql: str) -> list[tuple[str, str]]:
    """(pid, `phase syscall`) of each row an audit INSERT writes."""
    if not sql.startswith("INSERT INTO audit"):
        return []
    values = sql.split(" VALUES ", 1)[1]
    return [(m.group(3).strip(), f"{m.group(6)} {m.group(7)}") for m in _ROW.finditer(values)]
