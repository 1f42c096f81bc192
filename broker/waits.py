"""A notice when a process waits for a person (`libos run`, `libos resume --all`): the
request's id, what it asks, until when, and the commands that answer it, once per request.
Everything a tool or a model wrote is shown inert, cut to a summary; `libos approvals show`
shows the request whole."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.text import Text

from broker.caps.labels import show as show_labels
from broker.inert import shown
from broker.render import UNBOUND, inert, libos_command

SUMMARY = 200
CUT = ("none printed here: the request is longer than this notice shows; see it whole, with"
       " the commands that answer it")


class WaitNotices:
    """Which pending requests have been announced; `new(requests)` the notices for the rest."""

    def __init__(self, db: str | None) -> None:
        self.db = db
        self.seen: set[str] = set()

    def new(self, requests: list[dict[str, Any]]) -> list[Text]:
        notices = []
        for request in requests:
            if request["state"] != "pending" or request["id"] in self.seen:
                continue
            self.seen.add(request["id"])
            notices.append(self.notice(request))
        return notices

    def notice(self, r: dict[str, Any]) -> Text:
        rid = r["id"]
        until = datetime.fromtimestamp(r["deadline"], UTC).strftime("%H:%M:%S UTC")
        line = Text(f"process {shown(r['pid'])} waits for a person", style="bold yellow")
        # The commands answer the request only as shown here (`--shown`, as `approvals show`
        # prints them): a row that gives no digest (edited in the database) gets none.
        bound = [rid, "--shown", r["digest"]] if r.get("digest") else None
        if r["kind"] == "question":
            line.append(": it asks ")
            parts = [(r.get("question") or {}).get("text", "")]
            line.append(inert(parts[0], SUMMARY))
            answer = bound and [libos_command(self.db, "answer", *bound, "VALUE"),
                                libos_command(self.db, "deny", *bound)]
        else:
            line.append(": ")
            parts = [f"{r['syscall']} on {r['resource']}"]
            line.append(inert(parts[0], SUMMARY))
            if r.get("reason"):
                parts.append(r["reason"])
                line.append(" (reason: ")
                line.append(inert(r["reason"], SUMMARY))
                line.append(")")
            if r.get("labels"):  # what approving lets out: the page and `show` say it too
                parts.append(show_labels(r["labels"]))
                line.append(" (data labelled ")
                line.append(inert(parts[-1], SUMMARY))
                line.append(": approving declassifies it for this call)")
            answer = bound and [libos_command(self.db, "approve", *bound),
                                libos_command(self.db, "deny", *bound)]
        if answer and not all(shown(part, SUMMARY) == shown(part) for part in parts):
            # Cut here: no line bound to a tail it hid (the table's rule: no prefix to
            # approve by); `approvals show` shows it whole, with its commands.
            answer, unbound = None, CUT
        else:
            unbound = UNBOUND
        line.append(f"\n  request {rid}, denied at {until} unless answered: ")
        line.append(" or ".join(answer) if answer else unbound, style="bold")
        line.append(f"\n  whole: {libos_command(self.db, 'approvals', 'show', rid)}"
                    f"; or on the page: {libos_command(self.db, 'web')}", style="dim")
        return line
