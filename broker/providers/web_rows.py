"""The approvals page's HTML: the page around the requests, and one table row per request.

Everything a tool, a model or a process wrote (ids, names, resources, reasons, arguments,
questions, an image's name) goes through the one rendering rule (`broker.inert`) and is then
HTML-escaped, so it is shown as text and never acts. Rows are rendered here only: the page
and the fragment its script fetches for new requests (`/rows`) are the same rows.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from broker.inert import shown, shown_json

# The status line after an answer: the page's own words, chosen by the action it carried out.
DONE = {"once": "Approved once.", "always": "Approved always.", "deny": "Denied.",
        "deny-always": "Denied always.", "answer": "Answered."}
CAPABILITY_BUTTONS = (("once", "Approve once"), ("always", "Approve always"),
                      ("deny", "Deny"), ("deny-always", "Deny always"))


def inert(value: Any) -> str:
    """Text safe to put in HTML, whole: the one rendering rule, then HTML-escaped."""
    return "" if value is None else html.escape(shown(value), quote=True)


def inert_json(value: Any) -> str:
    """A value as JSON, whole, one key per line, for a scrollable box."""
    return html.escape(shown_json(value, indent=2), quote=True)


def when(ts: float) -> tuple[str, str]:
    """A moment as people read it (UTC) and as `<time datetime>` takes it."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC"), moment.isoformat()


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>libos approvals</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 16px/1.45 system-ui, sans-serif; margin: 1.5em; color: #111; background: #fff; }}
h1 {{ font-size: 1.5em; margin: 0 0 .5em; }}
table {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
th, td {{ border: 1px solid #bbb; padding: .5em; vertical-align: top; text-align: left;
          overflow-wrap: anywhere; }}
th {{ background: #f1f1f1; }}
col.request {{ width: 32%; }} col.answer {{ width: 24%; }}
dl {{ margin: 0; display: grid; grid-template-columns: max-content 1fr; gap: .15em .6em; }}
dt {{ font-weight: 600; color: #333; }} dd {{ margin: 0; }}
pre.whole {{ max-height: 24em; overflow: auto; white-space: pre-wrap; overflow-wrap: anywhere;
            margin: 0 0 .3em; padding: .4em; border: 1px solid #ccc; background: #fafafa;
            font: 14px/1.4 ui-monospace, monospace; }}
.hash {{ font: 13px/1.4 ui-monospace, monospace; color: #333; overflow-wrap: anywhere; }}
.deadline {{ color: #8a3b00; font-weight: 600; }}
form {{ display: flex; flex-wrap: wrap; gap: .4em; align-items: center; }}
button, input {{ font: inherit; padding: .3em .6em; min-height: 2em; }}
input[type=radio] {{ min-height: 0; }}
fieldset.scopes {{ width: 100%; margin: 0 0 .3em; padding: .3em .5em; border: 1px solid #bbb; }}
fieldset.scopes label {{ display: flex; gap: .4em; align-items: baseline; }}
fieldset.scopes span {{ overflow-wrap: anywhere; min-width: 0; }}
.msg {{ padding: .5em; background: #e8eefc; }}
.live {{ color: #444; font-size: .9em; }}
</style>
<script src="page.js" defer></script></head><body>
<h1>Pending approvals</h1>
{message}
<p class="live">New requests appear here as processes ask; nothing needs a reload.</p>
<p id="empty"{empty_hidden}>Nothing is waiting.</p>
<table id="requests"{table_hidden}>
<colgroup><col class="request"><col class="asks"><col class="answer"></colgroup>
<thead><tr><th>request</th><th>asks</th><th>answer</th></tr></thead>
<tbody>{rows}</tbody></table>
</body></html>"""


def page(requests: list[dict[str, Any]], csrf: str, message: str = "") -> str:
    """The whole page; `message` is one of `DONE`'s own sentences (or nothing)."""
    note = f'<p class="msg">{html.escape(message)}</p>' if message else ""
    return PAGE.format(message=note, rows=rows(requests, csrf),
                       empty_hidden=" hidden" if requests else "",
                       table_hidden="" if requests else " hidden")


def rows(requests: list[dict[str, Any]], csrf: str) -> str:
    return "".join(row(r, csrf) for r in requests)


def row(r: dict[str, Any], csrf: str) -> str:
    rid = inert(r["id"])
    until, iso = when(r["deadline"])
    facts = [("id", rid), ("process", f"{inert(r['pid'])} ({inert(r.get('image') or '?')})"),
             ("tool", inert(r["tool"] or "-"))]
    if r["kind"] == "question":
        facts.append(("to", inert(r["resource"])))
        what, buttons = _question(r, rid)
    else:
        facts += [("asks", f"{inert(r['syscall'])} on {inert(r['resource'])}"),
                  ("asked under", f"{inert(r['right'])} on {inert(r['ask_scope'])} (ask)")]
        if r["reason"] is not None:
            facts.append(("reason", inert(r["reason"])))
        if r.get("labels"):  # what approving declassifies, for this call
            facts.append(("data labelled", inert(", ".join(r["labels"]))))
        what, buttons = _capability(r, rid)
    facts.append(("until", f'<time class="deadline" datetime="{iso}">{until}</time>, '
                           "then denied"))
    described = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    form = (f'<form method="post" action="answer" data-id="{rid}">'
            f'<input type="hidden" name="csrf" value="{html.escape(csrf, quote=True)}">'
            f'<input type="hidden" name="id" value="{rid}">'
            f'<input type="hidden" name="digest" value="{inert(r.get("digest"))}">'
            f"{buttons}</form>")
    return (f'<tr id="{rid}"><td><dl>{described}</dl></td><td class="args">{what}</td>'
            f"<td>{form}</td></tr>")


def _question(r: dict[str, Any], rid: str) -> tuple[str, str]:
    question = r["question"] or {}
    what = f'<pre class="whole">{inert(question.get("text"))}</pre>'
    if question.get("choices") is not None:
        what += "choices:<pre class=\"whole\">" + "\n".join(
            html.escape(shown_json(c)) for c in question["choices"]) + "</pre>"
    if question.get("schema") is not None:
        what += f'schema:<pre class="whole">{inert_json(question["schema"])}</pre>'
    buttons = (f'<input name="value" aria-label="answer to {rid}">'
               '<button name="action" value="answer">Answer</button>'
               '<button name="action" value="deny">Decline</button>')
    return what, buttons


def _capability(r: dict[str, Any], rid: str) -> tuple[str, str]:
    text = r.get("args_text") or ""
    what = (f'<pre class="whole" tabindex="0" aria-label="arguments of {rid}">'
            f'{inert_json(r["args"])}</pre>'
            f'<div class="hash">{len(text)} characters, sha256 '
            f'{inert(r["args_hash"])}: "once" allows exactly these</div>')
    scopes = r.get("always_scopes") or []
    # "always" only for a scope no wider than the asking capability's: the broker's own
    # rule chose these, and it checks the answer again whatever is posted. A choice's value
    # is the scope itself (HTML-escaped: a value is posted, never shown); its label is inert.
    # (The value shown by the rule named no scope the rule takes: a resource with a zero-width
    # space, chosen as it is checked by default, was refused as not covering the asked.)
    choose = ("" if not scopes else
              f'<fieldset class="scopes" aria-label="always for {rid}">'
              '<legend>"always" for</legend>'
              + "".join(f'<label><input type="radio" name="scope" value="'
                        f'{html.escape(s, quote=True)}"{" checked" if n == 0 else ""}>'
                        f"<span>{inert(s)}</span></label>"
                        for n, s in enumerate(scopes))
              + "</fieldset>")
    offered = [(a, label) for a, label in CAPABILITY_BUTTONS if scopes or a != "always"]
    buttons = choose + "".join(f'<button name="action" value="{a}">{label}</button>'
                               for a, label in offered)
    return what, buttons
