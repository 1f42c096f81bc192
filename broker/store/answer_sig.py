"""The signature on an answer to an approval request written through the store (`libos
approve/deny/answer`, `libos web`): the row is anyone's who writes the database; what makes
the answer a person's is the signature of a key the broker trusts, as for a control request
(`broker.store.control_sig`, whose `sig` format it shares, under its own domain).

It covers the store, the request (its id, and what was asked: process, kind, call, the
arguments' hash, the time it was made and its deadline, so an answer fits that one request
and no other, nor the same one made to wait longer; and every column the grant is derived
from: the resource, the asking capability's id, kind, right and scope, the labels the answer
declassifies, the tool and the question, so a writer cannot widen what the person was shown
under their signature: red team 24) and the answer (state, answer, scope,
value, who, when). That a request is answered once is the broker's to keep
(`broker.kernel.approval_answers`).

What a front end showed a person of a request is bound by the digest of the asked part
(`shown_digest`): the page carries it, and the store signs an answer only over a row that
still gives it (`answer_approval(shown=...)`), so a writer's edit between the showing and
the click is refused, not signed.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from broker.store import control_sig

ANSWER_DOMAIN = b"libos approval answer v2\n"
_ASKED = ("id", "pid", "kind", "syscall", "args_hash", "resource", "cap_id", "cap_kind",
          "cap_right", "cap_scope", "labels", "tool", "question")
_ANSWERED = ("state", "answer", "scope", "value", "who")
_ASKED_TIMES = ("created", "deadline")
_TIMES = (*_ASKED_TIMES, "answered")


def _typed(row: dict[str, Any], times: tuple[str, ...], texts: tuple[str, ...]) -> bool:
    return (all(type(row.get(k)) in (int, float) for k in times)
            and type(row.get("pid")) is int
            and all(row.get(k) is None or type(row.get(k)) is str for k in texts))


def signed_fields(row: dict[str, Any]) -> list[Any] | None:
    """What the signature covers, from the row as stored; None if a field is not of its type
    (a row edited: no signature holds over it)."""
    if not _typed(row, _TIMES, (*_ASKED[2:], *_ANSWERED)):
        return None
    return [*(row.get(k) for k in _ASKED), *(repr(float(row[k])) for k in _TIMES),
            *(row.get(k) for k in _ANSWERED)]


def shown_digest(row: dict[str, Any]) -> str | None:
    """The sha256 (hex) of what an answer signs of the request itself (`signed_fields` but
    the answer): what a front end showed, carried back with the person's answer. None if a
    field is not of its type (no answer is signed over such a row)."""
    if not _typed(row, _ASKED_TIMES, _ASKED[2:]):
        return None
    asked = [*(row.get(k) for k in _ASKED), *(repr(float(row[k])) for k in _ASKED_TIMES)]
    return hashlib.sha256(json.dumps(asked, ensure_ascii=True).encode()).hexdigest()


def sign(key: Any, identity: str, row: dict[str, Any]) -> str:
    """The `sig` column of an answer written into `row` (the request, its answer fields set)."""
    fields = signed_fields(row)
    if fields is None:
        raise ValueError("an answer is signed over a request as the store keeps it")
    return control_sig.sign_fields(key, ANSWER_DOMAIN, identity, fields)


def holds(signed: control_sig.Signed, identity: str, row: dict[str, Any]) -> bool:
    fields = signed_fields(row)
    return fields is not None and signed.holds_fields(ANSWER_DOMAIN, identity, fields)
