"""Rendering for people: tables and transcripts, with every untrusted string made inert.

Text that came from a tool, a model or a file can carry terminal escape sequences or rich
markup; `inert` applies the one rendering rule (`broker.inert`) and the tables take it as
plain `Text`, never as markup. Approval views never cut: a value too long for a table cell is
left out, with a pointer to `libos approvals show ID`, which shows the request whole.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from broker.caps.labels import show as show_labels
from broker.inert import pasted, shown, shown_cell, shown_field, shown_json
from broker.planner.base import CallTool, Exit
from broker.render_long import LONG, LongTable, LongTree, Node

MAX_CELL = 120


def inert(value: Any, limit: int | None = MAX_CELL) -> Text:
    """A summary cell or line: the rule applied, cut (and marked) past `limit` characters."""
    return Text(shown(value, limit))


def _cell(value: Any) -> str:
    """A table's cell as `_table` shows it (None: empty)."""
    return shown("" if value is None else value, MAX_CELL)


def fork_outcome(result: Any) -> Text:
    """What a fork request's row says: its typed error (in red) and why, or the new pid."""
    if isinstance(result, dict) and "error" in result:
        said = inert(result["error"], 40)
        said.stylize("red")
        return said.append(" ").append(inert(result.get("message", ""), 300))
    pid = result.get("pid") if isinstance(result, dict) else result
    return Text("new process ").append(inert(pid, 40))


def heading(title: str) -> Text:
    return Text(f"\n── {title} ──", style="bold")


def action_text(action: Any) -> str:
    """A step's action as a person reads it: `name(args)`, `exit(code)`, or what a planner
    chose out of any shape (a name not text, args not JSON) or a row edited to no action."""
    if isinstance(action, CallTool):
        return f"{action.name}({json.dumps(action.args, default=repr)})"
    if isinstance(action, Exit):
        return f"exit({json.dumps(action.code, default=repr)})"
    return "(no action known)"


def history(proc: Any) -> list[Text]:
    lines = []
    for obs in proc.history:
        call = Text(f"[{proc.pid} {proc.image.name}] ", style="dim")
        call.append(inert(action_text(obs.action), 48))
        if obs.ok:
            call.append(" → ", style="green")
            call.append(inert(obs.result, 48))
        else:
            call.append(f" ✗ {obs.error['code']} ", style="red")  # type: ignore[index]
            call.append(inert(obs.error["message"], 60))  # type: ignore[index]
        lines.append(call)
    return lines


def tree(processes: list[dict[str, Any]]) -> Tree | LongTree:
    """The process tree: rich's, or past `render_long.LONG` rows, one line a process."""
    ordered = sorted(processes, key=lambda p: p["pid"])
    if len(ordered) > LONG:
        return LongTree("processes", (Node(p["pid"], p["parent"], _tree_label(p))
                                      for p in ordered))
    root = Tree("processes")
    nodes: dict[int, Tree] = {}
    for proc in ordered:
        parent = nodes.get(proc["parent"], root)
        nodes[proc["pid"]] = parent.add(_tree_label(proc))
    return root


def _tree_label(proc: dict[str, Any]) -> Text:
    # (Every field a row's writer sets, by the rule, and quoted with no blank where a blank
    # could pass for the one space between two fields or, the label wrapped, start a line
    # that looks like a node: `shown_field`; a reason of plain words as it is.)
    image = f"{proc['image']}:{proc['version']}"
    label = Text(f"{shown_field(proc['pid'], 40)} {shown_field(image, MAX_CELL)} ")
    colour = "red" if proc.get("ended_by") is not None or proc.get("forged") else (
        "green" if proc["state"] == "exited" else "yellow")
    label.append(_state(proc, lambda value: shown_field(value, MAX_CELL)), style=colour)
    if proc["reason"]:
        label.append(f" ({shown_field(proc['reason'], 60, prose=True)})")
    return label


def _table(columns: list[str], rows: list[list[Any]], title: str | None = None
           ) -> Table | LongTable:
    """rich's table, or past `render_long.LONG` rows, one plain line a row (print it with
    `soft_wrap=True`: `long_form`)."""
    if len(rows) > LONG:  # (a `Text` cell is inert already: its text, by the cells' rule)
        return LongTable(columns, ([v.plain if isinstance(v, Text) else v for v in row]
                                   for row in rows), MAX_CELL, title)
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")  # never an ellipsis the caller did not ask for
    for row in rows:
        table.add_row(*[v if isinstance(v, Text) else Text(_cell(v)) for v in row])
    return table


def ps_table(processes: list[dict[str, Any]]) -> Table | LongTable:
    """The process table: rich's, or past `render_long.LONG` rows, one line a process."""
    columns = ["pid", "parent", "image", "state", "reason", "exit", "usage", "label"]
    rows = [[p["pid"], p["parent"], f"{p['image']}:{p['version']}", _state(p), p["reason"],
             p["exit_code"], p["usage"], show_labels(p.get("labels") or ())] for p in processes]
    return _table(columns, rows)


def _state(proc: dict[str, Any], show: Callable[[Any], str] = str) -> str:
    """A row's state, and, for one the chain says ended (`ended_by`) or that an unsigned end
    holds (`held_by`), that it is not run (the row's own values as `show` shows them)."""
    state = show(proc["state"])
    if proc.get("forged") is not None:  # (its result and code not shown: red team 16)
        return f"{state}: forged result, not shown"
    if proc.get("held_by") is not None:  # (brokers sharing the store: `revived.Held`)
        return f"{state}: held by unsigned record {show(proc['held_by'])}, not run"
    if proc.get("ended_by") is None:
        return state
    return f"{state}: ended by record {show(proc['ended_by'])}, not run"


def label_policy(cap: dict[str, Any]) -> str:
    """A capability's labels as people read them: what it gives its results (`gives
    secret`), and what it does with labelled data flowing in (`secret: deny`, `*: ask`)."""
    parts = [f"gives {','.join(cap['labels'])}"] if cap.get("labels") else []
    parts += [f"{label}: {effect}" for label, effect in sorted(cap.get("flows", {}).items())]
    if cap.get("lifted"):  # what a person's approval declassified here
        parts.append(f"approved {','.join(cap['lifted'])}")
    return "; ".join(parts)


def caps_table(caps: list[dict[str, Any]], *, handles: bool = True) -> Table | LongTable:
    """Handles are random: leave them out where the output must be reproducible."""
    columns = ["kind", "scope", "rights", "effect", "uses", "derived from", "labels"]
    rows = [[c["kind"], c["scope"], ",".join(c["rights"]), c["effect"], c.get("uses"),
             "yes" if c.get("parent") else "", label_policy(c)] for c in caps]
    if handles:
        columns.insert(0, "handle")
        for row, cap in zip(rows, caps, strict=True):
            row.insert(0, cap["handle"][:10] + "…")
    return _table(columns, rows)


def objects_table(objects: list[dict[str, Any]]) -> Table | LongTable:
    return _table(["namespace", "name", "version", "type"],
                  [[o["ns"], o["name"], o["version"], o["type"]] for o in objects])


def audit_table(records: list[dict[str, Any]], *, detail: bool = True) -> Table | LongTable:
    """`records` as listed (`audit.as_listed`: a read folded into its call on a line of its
    own)."""
    columns = ["seq", "pid", "tool", "phase", "syscall", "resource"]
    rows = [[r["seq"], r["pid"], r["tool"], r["phase"], r["syscall"], r["resource"]]
            for r in records]
    if detail:
        columns.append("detail")
        for row, r in zip(rows, records, strict=True):
            d = r["detail"]
            row.append(d.get("message") or d.get("result") or d.get("args"))
    return _table(columns, rows)


def origin(spec: dict[str, Any]) -> str:
    """Where an image came from, in a few words."""
    made = spec.get("origin") or {}
    if "committed_from" in made:
        src = made["committed_from"]
        return (f"committed from pid {src.get('pid')} at checkpoint {src.get('checkpoint')} "
                f"(step {src.get('step')}, {src.get('image')}) by {made.get('by')}")
    if "registered_by" in made:
        return f"registered by pid {made['registered_by']}"
    return "registered by the host"


def _tool_name(tool: Any) -> Any:
    return tool if isinstance(tool, str) else tool.get("name") if isinstance(tool, dict) else tool


def images_table(images: list[dict[str, Any]]) -> Table | LongTable:
    return _table(["image", "tools", "needs", "origin", "created"], [
        [f"{i['name']}:{i['version']}", ", ".join(str(_tool_name(t)) for t in
                                                 i["spec"].get("tools", [])),
         len(i["spec"].get("needs", [])), origin(i["spec"]), _when(i["created"])]
        for i in images])


def image_view(spec: dict[str, Any]) -> list[Any]:
    """An image whole: what it is, where it came from, its tools, needs and restrictions."""
    planner = spec.get("planner") or {}
    kind = planner.get("kind", "none (the host drives it)")
    if kind in ("openai", "anthropic"):
        kind = f"{kind} {planner.get('model', '')} {planner.get('base_url') or ''}".strip()
    head = Text()
    for label, value in (("image", f"{spec['name']}:{spec['version']}"),
                         ("origin", origin(spec)), ("planner", kind),
                         ("budget", spec.get("budget") or "none"),
                         ("description", spec.get("description") or "")):
        head.append(f"{label:12}", style="bold")
        head.append(inert(value, 400))
        head.append("\n")
    tools = _table(["tool", "lang", "source hash", "manifest", "description"], [
        [t, "builtin", "", "", ""] if isinstance(t, str) else
        [t.get("name"), t.get("lang"), t.get("hash"), t.get("manifest"), t.get("description")]
        for t in spec.get("tools", [])], title="tools")
    out: list[Any] = [head, tools, Text("needs (a spawn grants at most these)", style="bold"),
                      caps_table(spec.get("needs", []), handles=False)]
    if spec.get("denies"):
        out += [Text("denies (every process of it carries these)", style="bold"),
                caps_table(spec["denies"], handles=False)]
    return out


def checkpoints_table(kept: list[dict[str, Any]]) -> Table | LongTable:
    return _table(["id", "step", "image", "cwd", "in flight", "pinned", "created"], [
        [c["id"], c["step"], c["image"], c["cwd"], c["pending"] or "",
         "yes" if c["pinned"] else "", _when(c["created"])] for c in kept])


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


def approvals_table(requests: list[dict[str, Any]]) -> Table | LongTable:
    """Pending requests, every field inert. A value that does not fit a cell whole is not
    shown at all (no prefix to approve by): the cell says how long it is and where to see the
    whole request."""
    rows = []
    for r in requests:
        # (a question's row with no text, a writer's: listed, its neighbours with it)
        what = r["question"].get("text", "") if r["question"] else r["args"]
        syscall = r["syscall"]
        if r.get("labels"):  # what approving declassifies
            syscall = f"{syscall} (data labelled {show_labels(r['labels'])})"
        rows.append([r["id"], r["pid"], r["tool"], syscall,
                     *[_whole_or_pointer(v, r["id"], long=len(requests) > LONG)
                       for v in (r["resource"], r["reason"], what)],
                     r["state"]])
    table = _table(["id", "pid", "tool", "syscall", "resource", "reason", "asks", "state"],
                   rows)
    if isinstance(table, Table):  # (the long form folds nothing)
        # The id is what a person pastes into `libos approve`: on one line, never folded.
        ids = table.columns[0]
        ids.no_wrap, ids.min_width = True, max((len(shown(r["id"])) for r in requests),
                                               default=2)
    return table


def libos_command(db: str | None, *words: str) -> str:
    """A command line a person can paste: `libos [--db DB] WORDS...`, quoted for a shell."""
    return shown(shlex.join(["libos", *(["--db", db] if db else []), *words]))


def approvals_hint(db: str | None, requests: list[dict[str, Any]]) -> Text:
    """Under the table: how to answer, with the first request's id as the example."""
    pending = [r for r in requests if r["state"] == "pending"]
    if not pending:
        return Text("nothing is waiting for a person")
    rid = pending[0]["id"]
    return Text(f"answer with {libos_command(db, 'approve', rid)} [--always] or "
                f"{libos_command(db, 'deny', rid)} (a question: "
                f"{libos_command(db, 'answer', 'ID', 'VALUE')}); an id's first few characters "
                f"will do when no other request starts with them; "
                f"{libos_command(db, 'approvals', 'show', 'ID')} shows one whole", style="dim")


def _whole_or_pointer(value: Any, request_id: str, *, long: bool = False) -> Any:
    """`value` whole in its cell, or where to see it whole. In the long form the cell is
    `shown_cell`'s, which may quote it (escapes make it longer): the value itself goes there,
    when that cell holds it whole."""
    if value is None:
        return Text("")
    text = shown(value)
    if long:
        if shown_cell(value, MAX_CELL) == shown_cell(value):
            return value
    elif len(text) <= MAX_CELL:
        return Text(text)
    return Text(f"({len(text)} characters, not shown here: libos approvals show "
                f"{pasted(request_id)})", style="yellow")


UNBOUND = ("none printed: the request's row is not of its types (edited in the database), so"
           " no answer can be bound to it as shown")


def approval_view(r: dict[str, Any]) -> Text:
    """One request, whole: every field, the arguments in full (one key per line) with the
    hash that a grant binds to, and the commands that answer it."""
    # The commands answer the request only as shown here (`--shown`); a row with no digest
    # (a column not of its type: edited in the database) gets none, as on the approvals page
    # (printed bare, a writer's edit after the showing was signed: red team 38).
    rid = f"{pasted(r['id'])} --shown {pasted(r['digest'])}" if r.get("digest") else None
    out = Text()

    def field(label: str, value: Any) -> None:
        out.append(f"{label:<11}", style="bold")
        out.append(shown(value))  # (already shown parts stay as they are: the rule is idempotent)
        out.append("\n")

    state = shown(r["state"])
    if r["state"] == "pending":
        state += f" until {_when(r['deadline'])}"
    else:
        state += f" ({shown(r['answer'])} by {shown(r['who'])})" if r["answer"] else ""
    field("request", f"{shown(r['id'])} ({shown(r['kind'])}, asked {_when(r['created'])})")
    field("state", state)
    field("process", f"{r['pid']} ({shown(r.get('image') or 'image unknown')})")
    field("tool", r["tool"] or "-")
    if r["kind"] == "question":
        question = r["question"] or {}
        field("to", r["resource"])
        field("question", question.get("text", ""))
        for n, choice in enumerate(question.get("choices") or [], 1):
            field("choice" if n == 1 else "", f"{n}. {shown_json(choice)}")
        if question.get("schema") is not None:
            out.append("schema\n", style="bold")
            out.append(shown_json(question["schema"], indent=2) + "\n")
        field("answer", f"libos answer {rid} VALUE    libos deny {rid}" if rid else UNBOUND)
        return out
    field("asks", f"{shown(r['syscall'])} on {shown(r['resource'])}")
    field("right", f"{shown(r['right'])} (the asking capability covers "
                   f"{shown(r['ask_scope'])})")
    if r["reason"] is not None:
        field("reason", r["reason"])
    text = r.get("args_text") or ""
    field("arguments", f"sha256 {shown(r['args_hash'])} ({len(text)} characters as JSON), "
                       "whole:")
    out.append(shown_json(r["args"], indent=2) + "\n")
    if rid is None:
        field("answer", UNBOUND)
        return out
    field("answer", f"libos approve {rid}            once: exactly these arguments (this hash)")
    field("", f"libos approve {rid} --always   a standing grant for the resource")
    scopes = r.get("always_scopes") or []
    if len(scopes) > 1:  # the scopes the answer rule takes, narrowest first; each is pasted
        # into the line (the narrowest is the resource, a path the model chose): one word
        field("", f"libos approve {rid} --always --scope S   S one of: "
                  + ", ".join(pasted(s) for s in scopes))
    field("", f"libos deny {rid} [--always]")
    return out


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def print_json(data: Any) -> None:
    """What `--json` prints: ASCII, so the same JSON reaches a parser and nothing (a bidi
    override, U+2028, an 8-bit CSI) that a terminal showing it would act on."""
    print(json.dumps(data, default=repr, ensure_ascii=True, indent=2))
