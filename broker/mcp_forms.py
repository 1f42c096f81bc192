"""The forms that put an approval request to an MCP client's user (by elicitation): the whole
request, every string inert, or (too long for a form) one that only denies and says where to
see it whole. What each option means is the form's own: anything a client sends back that the
form did not offer is a denial (`broker.mcp_server`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from broker.inert import pasted, shown, shown_json

# The bound of what a form shows whole. Clients show a form's message in a dialog of their
# own, which may cut or fold it; a request longer than this is not put in a form at all.
MAX_FORM_MESSAGE = 1200
MAX_FORM_CHOICES = 20
MAX_CHOICE_TITLE = 200
MAX_SHOWN_RESOURCE = 200  # in the header of a deny-only form
CAPABILITY_OPTIONS = {"once": "Once: exactly this call, these arguments",
                      "always": "Always: a standing grant for this resource exactly",
                      "deny": "Deny"}


@dataclass(frozen=True)
class Form:
    """What a client's user is shown: the message, the form's schema, and what each option
    the form offers means. Anything the client sends back that was not offered is a denial."""

    message: str
    schema: dict[str, Any]
    offered: dict[str, Any]  # option -> "once" | "always" | "deny" | ("answer", value)
    whole: bool
    free_text: bool = False
    digest: str | None = None  # the request as shown (`answer_sig.shown_digest`)


def _schema(prop: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["answer"], "properties": {"answer": prop}}


def _options(titles: dict[str, str], title: str) -> dict[str, Any]:
    return {"type": "string", "title": title,
            "oneOf": [{"const": const, "title": t} for const, t in titles.items()]}


def _deny_only(request: dict[str, Any], what: str) -> Form:
    """A request too long for a form: say where to see it whole; offer only "deny"."""
    rid = pasted(request["id"])
    resource = shown(request["resource"], MAX_SHOWN_RESOURCE + 1)
    if len(resource) > MAX_SHOWN_RESOURCE:
        resource = f"(a resource of {len(request['resource'])} characters)"
    head = (f"libos: process {request['pid']} asks a question to {resource}"
            if request["kind"] == "question" else
            f"libos: process {request['pid']} asks to run {shown(request['syscall'])} on "
            f"{resource}")
    message = "\n".join([
        head,
        f"This request is too long to show here whole ({what}).",
        f"See all of it with `libos approvals show {rid}` or on the approvals page "
        "(`libos web`), and answer it there. Here you can only deny it."])
    return Form(message, _schema(_options({"deny": "Deny"}, "Deny this request?")),
                {"deny": "deny"}, whole=False)


def _capability_options(resource: str, scopes: Sequence[str]
                        ) -> tuple[dict[str, str], dict[str, Any]]:
    """once, always (this resource), always for each wider scope, deny."""
    titles = {k: t for k, t in CAPABILITY_OPTIONS.items() if k != "deny"}
    offered: dict[str, Any] = {k: k for k in titles}
    for n, scope in enumerate(s for s in scopes if s != resource):
        title = f"Always for {shown(scope)}"
        if len(title) <= MAX_CHOICE_TITLE and n < MAX_FORM_CHOICES:
            titles[f"always:{n + 1}"] = title
            offered[f"always:{n + 1}"] = ("scope", scope)
    titles["deny"], offered["deny"] = CAPABILITY_OPTIONS["deny"], "deny"
    return titles, offered


def approval_form(request: dict[str, Any], scopes: Sequence[str] = ()) -> Form | None:
    """The form that puts a request to a person: the whole request, every string inert, or
    (too long for a form) one that only denies. None when a form cannot hold the answer (a
    question with a JSON Schema: it is answered with `libos answer` or on the page).

    `scopes` are the scopes an `always` answer may take (`broker.approvals.scopes`, narrowest
    first, none wider than the asking capability): beside "always" (this resource exactly),
    each wider one is an option `always:N` of its own (the broker checks the scope again)."""
    if request["kind"] == "capability":
        text = request.get("args_text") or ""
        if len(text) > MAX_FORM_MESSAGE:  # shown, it is longer still: not worth escaping
            return _deny_only(request, f"{len(text)} characters of arguments, sha256 "
                                       f"{shown(request['args_hash'])}")
        args = shown_json(request["args"])
        lines = [f"libos: process {request['pid']} asks to run {shown(request['syscall'])} on "
                 f"{shown(request['resource'])}",
                 f"tool: {shown(request['tool'] or '-')}   right: {shown(request['right'])}",
                 f"arguments (sha256 {shown(request['args_hash'])}): {args}"]
        if request["reason"]:
            lines.append(f"reason given: {shown(request['reason'])}")
        if request.get("labels"):
            lines.append(f"data labelled {shown(', '.join(request['labels']))}: approving "
                         "declassifies it for this call")
        lines.append("once: this exact call only; always: a standing grant; deny: refuse.")
        message = "\n".join(lines)
        if len(message) > MAX_FORM_MESSAGE:
            return _deny_only(request, f"{len(args)} characters of arguments, sha256 "
                                       f"{shown(request['args_hash'])}")
        titles, offered = _capability_options(request["resource"], scopes)
        return Form(message, _schema(_options(titles, "Allow this call?")), offered,
                    whole=True, digest=request.get("digest"))
    question = request["question"] or {}
    if "schema" in question:
        return None
    text = question.get("text", "")
    choices = question.get("choices")
    if len(str(text)) > MAX_FORM_MESSAGE or len(choices or ()) > MAX_FORM_CHOICES:
        return _deny_only(request, f"{len(str(text))} characters and "
                                   f"{len(choices or ())} choices")
    message = f"libos: process {request['pid']} asks: {shown(text)}"
    if choices is None:
        if len(message) > MAX_FORM_MESSAGE:
            return _deny_only(request, f"{len(message)} characters")
        return Form(message, _schema({"type": "string", "title": "Answer"}), {}, whole=True,
                    free_text=True, digest=request.get("digest"))
    # Options are numbers; their labels are the choices, inert. Labels that are too long,
    # empty, or that look alike cannot be told apart in a form: it only denies.
    raw = [c if isinstance(c, str) else json.dumps(c, ensure_ascii=False, default=repr)
           for c in choices]
    titles = {str(n): shown(r) if len(r) <= MAX_CHOICE_TITLE else "" for n, r in enumerate(raw)}
    if (len(message) > MAX_FORM_MESSAGE or len(set(titles.values())) < len(titles)
            or any(not t or len(t) > MAX_CHOICE_TITLE for t in titles.values())):
        return _deny_only(request, f"{len(message)} characters and {len(choices)} choices")
    return Form(message, _schema(_options(titles, "Answer")),
                {k: ("answer", c) for k, c in zip(titles, choices, strict=True)}, whole=True,
                digest=request.get("digest"))
