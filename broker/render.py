"""Rendering for people: tables and transcripts, with every untrusted string made inert.

Text that came from a tool, a model or a file can carry terminal escape sequences or rich
markup; `inert` turns control characters into visible escapes, cuts long values, and the
tables take it as plain `Text`, never as markup.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

MAX_CELL = 120
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def inert(value: Any, limit: int = MAX_CELL) -> Text:
    text = value if isinstance(value, str) else json.dumps(value, default=repr,
                                                           ensure_ascii=False)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text).replace("\n", "\\n")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return Text(text)


def heading(title: str) -> Text:
    return Text(f"\n── {title} ──", style="bold")


def history(proc: Any) -> list[Text]:
    lines = []
    for obs in proc.history:
        action = obs.action
        call = Text(f"[{proc.pid} {proc.image.name}] ", style="dim")
        call.append(inert(f"{action.name}({json.dumps(action.args, default=repr)})", 48))
        if obs.ok:
            call.append(" → ", style="green")
            call.append(inert(obs.result, 48))
        else:
            call.append(f" ✗ {obs.error['code']} ", style="red")  # type: ignore[index]
            call.append(inert(obs.error["message"], 60))  # type: ignore[index]
        lines.append(call)
    return lines


def tree(processes: list[dict[str, Any]]) -> Tree:
    root = Tree("processes")
    nodes: dict[int, Tree] = {}
    for proc in sorted(processes, key=lambda p: p["pid"]):
        label = Text(f"{proc['pid']} {proc['image']}:{proc['version']} ")
        label.append(proc["state"], style="green" if proc["state"] == "exited" else "yellow")
        if proc["reason"]:
            label.append(" (")
            label.append(inert(proc["reason"], 60))
            label.append(")")
        parent = nodes.get(proc["parent"], root)
        nodes[proc["pid"]] = parent.add(label)
    return root


def _table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> Table:
    table = Table(*columns, title=title, show_lines=False)
    for row in rows:
        table.add_row(*[inert("" if v is None else v) for v in row])
    return table


def ps_table(processes: list[dict[str, Any]]) -> Table:
    return _table(["pid", "parent", "image", "state", "reason", "exit", "usage"], [
        [p["pid"], p["parent"], f"{p['image']}:{p['version']}", p["state"], p["reason"],
         p["exit_code"], p["usage"]] for p in processes])


def caps_table(caps: list[dict[str, Any]], *, handles: bool = True) -> Table:
    """Handles are random: leave them out where the output must be reproducible."""
    columns = ["kind", "scope", "rights", "effect", "uses", "derived from"]
    rows = [[c["kind"], c["scope"], ",".join(c["rights"]), c["effect"], c.get("uses"),
             "yes" if c.get("parent") else ""] for c in caps]
    if handles:
        columns.insert(0, "handle")
        for row, cap in zip(rows, caps, strict=True):
            row.insert(0, cap["handle"][:10] + "…")
    return _table(columns, rows)


def objects_table(objects: list[dict[str, Any]]) -> Table:
    return _table(["namespace", "name", "version", "type"],
                  [[o["ns"], o["name"], o["version"], o["type"]] for o in objects])


def audit_table(records: list[dict[str, Any]], *, detail: bool = True) -> Table:
    columns = ["seq", "pid", "tool", "phase", "syscall", "resource"]
    rows = [[r["seq"], r["pid"], r["tool"], r["phase"], r["syscall"], r["resource"]]
            for r in records]
    if detail:
        columns.append("detail")
        for row, r in zip(rows, records, strict=True):
            d = r["detail"]
            row.append(d.get("message") or d.get("result") or d.get("args"))
    return _table(columns, rows)


def verdict(count: int, problems: list[str]) -> Text:
    if not problems:
        return Text(f"audit chain verified: {count} records, no edits, gaps or reordering",
                    style="bold green")
    text = Text(f"audit chain BROKEN ({len(problems)} problems in {count} records):\n",
                style="bold red")
    for problem in problems:
        text.append(inert(problem, 200))
        text.append("\n")
    return text


def approvals_table(requests: list[dict[str, Any]]) -> Table:
    """Pending requests, every field inert: what a tool wrote cannot steer the terminal."""
    rows = []
    for r in requests:
        what = r["question"]["text"] if r["question"] else r["args"]
        rows.append([r["id"], r["pid"], r["tool"], r["syscall"], r["resource"], r["reason"],
                     what, r["state"]])
    return _table(["id", "pid", "tool", "syscall", "resource", "reason", "asks", "state"], rows)
