"""The answer rules: which answers a request takes, and what an answer grants.

Shared by every front end, so the CLI in another OS process refuses exactly what the broker
would; the broker applies `derive_grant` when it grants.
"""

from __future__ import annotations

import json
from typing import Any

from broker.caps import Capability, CapSpec
from broker.caps.capability import scope_covers
from broker.caps.scope import MAX_SCOPE_LEN, validate_scope
from broker.errors import Conflict, InvalidArgument, NotCapable
from broker.json_text import MAX_STORED_DEPTH, TooDeepAnswer, depth_within, utf8
from broker.schema import validate
from broker.store.json_column import read_json
from broker.store.labels import load_labels

CAPABILITY_ANSWERS = ("once", "always", "deny", "deny-always")
QUESTION_ANSWERS = ("answer", "deny")


def check_names(approval_id: Any, scope: Any) -> None:
    """Before the store is asked: a request id or scope holding a lone surrogate (bytes that
    are not UTF-8 on a command line) names nothing any store can hold (its query raised an
    untyped UnicodeEncodeError, and the attempt left no trace)."""
    for text, what in ((approval_id, "request id"), (scope, "scope")):
        if isinstance(text, str) and not utf8(text):
            raise InvalidArgument(f"the {what} is not UTF-8 text")


def storable(text: str) -> str:
    """`text` as a refusal's record keeps it: a lone surrogate as its escape (kept as is,
    no record of it could be written, and one left for the broker jammed its sweep)."""
    return text if utf8(text) else text.encode("utf-8", "backslashreplace").decode()


def check_answer(row: dict[str, Any], answer: str, *, scope: str | None = None,
                 value: Any = None, now: float, alive: bool = True
                 ) -> tuple[str, str | None, str | None]:
    """Validate an answer against its request, before anything is written (`alive`: whether
    the asking process still runs). Returns the new state, the scope to grant and the JSON
    value. Shared by every front end, so the CLI in another OS process refuses exactly what
    the broker would."""
    if row["state"] != "pending":
        raise Conflict(f"approval request {row['id']} is already {row['state']}")
    if row["deadline"] <= now:
        raise Conflict(f"approval request {row['id']} has expired")
    if not alive:
        raise Conflict(f"approval request {row['id']}: process {row['pid']} has ended")
    if row["kind"] == "question":
        if answer not in QUESTION_ANSWERS:
            raise InvalidArgument(f"{row['id']} is a question: answer it (or deny it)")
        if scope is not None:
            raise InvalidArgument("a question's answer takes no scope")
        if answer == "deny":
            return "denied", None, None
        # (Measured first: one stored just under the recursion limit could not be read
        # again from a deeper stack; comparing or writing it would recurse past it.)
        if isinstance(value, TooDeepAnswer) or not depth_within(value, MAX_STORED_DEPTH):
            raise InvalidArgument(f"the answer is nested too deep (more than "
                                  f"{MAX_STORED_DEPTH} levels)")
        try:  # (keys sorted: keys of two types, `{1: "a", "1": "b"}` read back `{"1": "b"}`)
            json.dumps(value, sort_keys=True)
        except (TypeError, ValueError) as exc:  # a set, an object: no JSON type
            raise InvalidArgument(f"the answer is not plain JSON data ({str(exc)[:120]})"
                                  ) from None
        check_value(read_json(row["question"], f"request {row['id']}'s question"), value)
        encoded = json.dumps(value, ensure_ascii=False)
        if not utf8(encoded):  # (a lone surrogate, "\ud800" in JSON: no store writes it)
            raise InvalidArgument("the answer holds text UTF-8 cannot encode (a lone "
                                  "surrogate)")
        return "approved", None, encoded
    if answer not in CAPABILITY_ANSWERS:
        raise InvalidArgument(f"unknown answer {answer!r}; one of {CAPABILITY_ANSWERS}")
    if value is not None:
        raise InvalidArgument("an approval takes no value")
    if answer in ("once", "deny"):
        if scope is not None:
            raise InvalidArgument(f"{answer!r} is bound to the exact call; it takes no scope")
        return ("approved" if answer == "once" else "denied"), None, None
    scope = check_standing_scope(row, row["resource"] if scope is None else scope,
                                 deny=answer == "deny-always")
    return ("approved" if answer == "always" else "denied"), scope, None


def check_standing_scope(row: dict[str, Any], scope: str, *, deny: bool) -> str:
    """The scope of an `always` (or `deny-always`) answer: it must cover the asked resource,
    and an approval may not reach beyond the asking capability."""
    scope = validate_scope(scope)
    if not scope_covers(row["cap_kind"], scope, row["resource"], deny=deny):
        raise InvalidArgument(f"scope {scope!r} does not cover the asked {row['resource']!r}")
    right = frozenset({row["cap_right"]})
    if not deny and not CapSpec(row["cap_kind"], scope, right).within(
            CapSpec(row["cap_kind"], row["cap_scope"], right, effect="ask"), answered=True):
        # Approving may not widen what was asked: never beyond the `ask` capability.
        raise NotCapable(f"scope {scope!r} is wider than the asking capability's "
                         f"{row['cap_scope']!r}")
    return scope


def check_value(question: dict[str, Any], value: Any) -> None:
    choices = question.get("choices")
    if choices is not None and value not in choices:
        raise InvalidArgument("the answer is not one of the choices")
    schema = question.get("schema")
    if schema is not None:
        validate(schema, value, "the answer does not fit the schema")
    if choices is None and schema is None and not isinstance(value, str):
        raise InvalidArgument("the answer must be text")


def _shown(row: dict[str, Any]) -> frozenset[str]:
    """The labels the request named: all an approval may declassify."""
    labels = row.get("labels")
    return load_labels(labels) if isinstance(labels, str) else frozenset(labels or ())


def derive_grant(row: dict[str, Any], ask: Capability | None, now: float) -> CapSpec | str:
    """What an `once` or `always` answer grants, derived from the asking capability by the
    one rule (`CapSpec.within`): `once` one use (bound to the arguments by the caller),
    `always` the chosen scope with every use the asking capability has left; both keep its
    expiry. A string says why nothing can be granted."""
    if ask is None:
        return "the asking capability was revoked meanwhile"
    if ask.expires is not None and ask.expires <= now:
        return "the asking capability has expired"
    if ask.uses == 0:
        return "the asking capability has no uses left"
    once = row["answer"] == "once"
    # `once` is bound to the exact arguments. A resource too long to be a scope (a command
    # with a long environment) is covered by the asking scope instead.
    once_scope = row["resource"] if len(row["resource"]) <= MAX_SCOPE_LEN else row["cap_scope"]
    spec = CapSpec(row["cap_kind"], once_scope if once else row["scope"],
                   frozenset({row["cap_right"]}), uses=1 if once else ask.uses,
                   expires=ask.expires, policy=ask.policy.answered(_shown(row)))
    if not spec.within(ask, answered=True):
        return "the answer reaches beyond the asking capability"
    return spec
