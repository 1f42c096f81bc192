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
"""

from __future__ import annotations

from typing import Any

from broker.store import control_sig

ANSWER_DOMAIN = b"libos approval answer v2\n"
_ASKED = ("id", "pid", "kind", "syscall", "args_hash", "resource", "cap_id", "cap_kind",
          "cap_right", "cap_scope", "labels", "tool", "question")
_ANSWERED = ("state", "answer", "scope", "value", "who")
_TIMES = ("created", "deadline", "answered")


def signed_fields(row: dict[str, Any]) -> list[Any] | None:
    """What the signature covers, from the row as stored; None if a field is not of its type
    (a row edited: no signature holds over it)."""
    if not all(type(row.get(k)) in (int, float) for k in _TIMES):
        return None
    if type(row.get("pid")) is not int or not all(
            row.get(k) is None or type(row.get(k)) is str for k in (*_ASKED[2:], *_ANSWERED)):
        return None
    return [*(row.get(k) for k in _ASKED), *(repr(float(row[k])) for k in _TIMES),
            *(row.get(k) for k in _ANSWERED)]


def sign(key: Any, identity: str, row: dict[str, Any]) -> str:
    """The `sig` column of an answer written into `row` (the request, its answer fields set)."""
    fields = signed_fields(row)
    if fields is None:
        raise ValueError("an answer is signed over a request as the store keeps it")
    return control_sig.sign_fields(key, ANSWER_DOMAIN, identity, fields)


def holds(signed: control_sig.Signed, identity: str, row: dict[str, Any]) -> bool:
    fields = signed_fields(row)
    return fields is not None and signed.holds_fields(ANSWER_DOMAIN, identity, fields)
