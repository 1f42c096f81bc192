"""A request as stored, and answering one in the store without the broker's kernel.

A front end in another OS process (the CLI, the web page) only writes the answer into the
pending row, after the same checks the broker makes (`rules.check_answer`), signed by the
user's audit key (`broker.store.answer_sig`: a broker applies no answer through the store
without it); a refusal is kept for the broker to audit. The broker audits and applies the
answer itself. A request the chain records closed (cancelled, expired) is listed, and
refused, as the chain says, whatever its row says (`broker.approvals.closed`); an answer
carrying the digest of the request as shown (`shown`) is signed only over a row that still
gives it.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from broker.approvals.closed import ClosedOnChain
from broker.approvals.rules import check_answer, check_names, storable
from broker.approvals.scopes import scope_choices
from broker.errors import ApprovalDenied, Cancelled, Conflict, InvalidArgument, LibosError, NotFound
from broker.json_tree import rebuild
from broker.lifecycle import LIVE
from broker.store import AuditRecord, SQLiteStore, answer_sig, args_hash
from broker.store.json_column import Unreadable, read_json
from broker.store.keys import AuditKey, user_key
from broker.store.labels import load_labels

log = logging.getLogger(__name__)

MAX_WHO = 128
ID_PREFIX = "apr_"
MAX_NAMED = 5  # ids an ambiguous prefix names


ID_FORM = re.compile(r"apr_[0-9a-f]{24}")  # what `new_approval_id` makes, and nothing else


def new_approval_id() -> str:
    return ID_PREFIX + secrets.token_hex(12)


def _bytes_out(value: Any) -> Any:
    # A bytearray as itself: its hash is of its own repr, which bytes read back did not
    # give (red team 35: the request was called edited in the database, its call failed).
    if isinstance(value, bytes | bytearray | memoryview):
        tag = "$bytearray" if isinstance(value, bytearray) else "$bytes"
        return {tag: base64.b64encode(bytes(value)).decode()}
    return value


def _encode(value: Any) -> Any:
    """`value` as JSON holds it: bytes as {"$bytes": base64}, keys as text (no recursion:
    arguments nest as deep as a call may, `json_tree`)."""
    return rebuild(value, leaf=_bytes_out, key=str, tuples=False)


def _bytes_back(obj: dict[str, Any]) -> Any:
    """`_encode`'s `{"$bytes": base64}` back to the bytes (a `json.loads` object hook: no
    recursion of ours, so arguments as deep as a call may nest them are read)."""
    if len(obj) == 1 and isinstance(b64 := obj.get("$bytes", obj.get("$bytearray")), str):
        with suppress(ValueError):
            read = base64.b64decode(b64, validate=True)
            return read if "$bytes" in obj else bytearray(read)
    return obj


def gives_hash(text: Any, args: Any, expected: Any) -> bool:
    """Whether the stored arguments (`text`, `encode_args`; `args`, it parsed) are those
    `expected` (their `args_hash`) binds: what a front end shows is what an answer grants.
    (A dict that only looks like stored bytes is taken as itself too.)"""
    try:
        if args_hash(args) == expected:
            return True
        return '"$byte' in text and args_hash(json.loads(text, object_hook=_bytes_back)
                                                ) == expected
    except (RecursionError, ValueError, TypeError):  # (nested past what is hashed: edited)
        return False


def resolve_id(store: SQLiteStore, text: str) -> str:
    """The request that `text` names: its whole id, or a prefix of it (with or without
    `apr_`) that no other request, answered or not, shares. Requests are never deleted, so a
    prefix that once named one request names it for good."""
    prefix = text if text.startswith(ID_PREFIX) else ID_PREFIX + text
    if ID_FORM.fullmatch(prefix):  # a whole id names its request alone (a writer's row
        with suppress(NotFound):   # named it and more made it refused: red team 39)
            return str(store.get_approval(prefix)["id"])
    if len(prefix) <= len(ID_PREFIX):
        raise InvalidArgument("give an approval request's id, or the start of one")
    found = store.approval_ids_starting(prefix, MAX_NAMED + 1)
    if not found:
        raise NotFound(f"no approval request {text} (see `libos approvals --all`)")
    if len(found) > 1:
        named = ", ".join(found[:MAX_NAMED]) + (", …" if len(found) > MAX_NAMED else "")
        raise InvalidArgument(f"{text} is the start of more than one request id ({named}): "
                              "give more of the id")
    return found[0]


def check_form(approval_id: Any) -> None:
    """`Unreadable` for a request's id not of the form the broker makes (`ID_FORM`): its row
    was edited in the database, and it is shown and answered by nobody (red teams 38, 39)."""
    if not isinstance(approval_id, str) or not ID_FORM.fullmatch(approval_id):
        raise Unreadable(f"request {str(approval_id)[:40]!r}: its id is not one the broker"
                         " makes: edited in the database")


def check_times(row: dict[str, Any]) -> None:
    """`Unreadable` for a request made or due at no moment a person can be shown (text, or a
    number past any date): its row was edited in the database. Shown as it was, one such
    deadline failed the approvals page for every request and `approvals show` untyped."""
    for key in ("created", "deadline"):
        value = row.get(key)
        try:
            if type(value) not in (int, float):
                raise TypeError(key)
            datetime.fromtimestamp(value, UTC)
        except (TypeError, ValueError, OverflowError, OSError):
            raise Unreadable(f"request {row['id']}'s {key} is not a time: edited in the "
                             "database") from None


def encode_args(args: Any) -> str:
    """The exact arguments as JSON (bytes as {"$bytes": base64}), for people to read."""
    return json.dumps(_encode(args), ensure_ascii=False, sort_keys=True, default=repr)


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A request as front ends show it (args and question decoded)."""
    out = {k: row[k] for k in ("id", "kind", "pid", "tool", "syscall", "resource", "args_hash",
                               "reason", "created", "deadline", "state", "answer", "who",
                               "scope")}
    out["right"] = f"{row['cap_kind']}:{row['cap_right']}" if row.get("cap_kind") else None
    out["image"] = (f"{row['proc_image']}:{row['proc_version']}" if row.get("proc_image")
                    else None)  # the asking process's image
    out["ask_scope"] = row.get("cap_scope")
    out["always_scopes"] = scope_choices(row)  # what an `always` answer may choose
    check_form(row["id"])  # (shown in tables and in commands a person pastes)
    check_times(row)  # (shown on every surface)
    what = f"request {row['id']}'s"
    out["args"] = read_json(row["args"], f"{what} arguments")
    # (shown as what "once" allows exactly: they must be what it binds)
    if not gives_hash(row["args"], out["args"], row["args_hash"]):
        raise Unreadable(f"{what[:64]} arguments do not give its hash (the one an answer"
                         " binds): edited in the database")
    out["args_text"] = row["args"]  # whole: a surface shows all of it, or offers only "deny"
    out["question"] = (read_json(row["question"], f"{what} question") if row.get("question")
                       else None)
    if out["question"] is not None and not isinstance(out["question"].get("choices", []),
                                                      list | None):  # (shown one by one)
        raise Unreadable(f"{what[:64]} question's choices are not a list: edited in the"
                         " database")
    out["value"] = read_json(row["value"], f"{what} answer", None) if row.get("value") else None
    # Labels of the caller's data a flow bound asks about: approving declassifies them.
    out["labels"] = sorted(load_labels(row.get("labels")))
    # What an answer signs of the request, as shown: carried back with the answer (`shown`).
    out["digest"] = answer_sig.shown_digest(row)
    return out


def check_answerable(row: dict[str, Any]) -> None:
    """`Unreadable` for a request no surface shows as it is (`public` refuses it) or whose row
    is not of its types (no answer can be signed over it): answered by nobody, before anything
    is written. (Checked only after the write, one was signed and applied while the person
    was told it was refused, edited in the database: red team 42.)"""
    public(row)
    if answer_sig.shown_digest(row) is None:
        raise Unreadable(f"request {row['id']}'s row is not of its types: edited in the"
                         " database")


def shown_or_checked(row: dict[str, Any], shown: str | None) -> str | None:
    """The digest an answer is written over: the front end's (`shown`), else the row's as it
    was read and checked, so that a writer's edit between that read and the write is refused,
    not signed unseen (red team 42 through the store; red team 44 in the kernel, by the
    broker's own key). (`check_answerable` made sure the row gives one.)"""
    return shown if shown is not None else answer_sig.shown_digest(row)


def closing_record(row: dict[str, Any], state: str, why: str) -> AuditRecord:
    """The record of a request closed unanswered (`cancelled`, `expired`): what the chain
    says of it for good (`broker.approvals.closed`), whatever its row says later."""
    return AuditRecord(
        phase="denied" if state == "expired" else "admin", syscall=row["syscall"],
        pid=row["pid"], inv=row["inv"], tool=row["tool"], resource=row["resource"],
        args_hash=row["args_hash"], cap_id=row["cap_id"],
        detail={"request": row["id"], "state": state,
                "error": ApprovalDenied.code if state == "expired" else Cancelled.code,
                "message": f"{row['id']}: {why}",
                **({"answer": row["answer"], "who": row["who"]} if row.get("answer") else {})})


def listed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Requests as front ends list them: one whose row cannot be read back (edited in the
    database: `Unreadable`) is left out, not the listing refused; read alone, it is."""
    out = []
    for row in rows:
        try:
            out.append(public(row))
        except Unreadable as exc:
            log.warning("approval request left out of the list: %s", exc.message)
    return out


def listed_as_recorded(store: SQLiteStore, closed: ClosedOnChain,
                       state: str | None = "pending") -> list[dict[str, Any]]:
    """Requests as front ends list them (`listed`), each in the state the chain records: one
    it records closed is not listed pending, whatever its row says."""
    rows = closed.open_rows(store, store.list_approvals(state))
    return listed([row for row in rows if state is None or row["state"] == state])


def check_not_closed(store: SQLiteStore, closed: ClosedOnChain, approval_id: str) -> None:
    """`Conflict` if the chain records the request closed (its row set back to pending)."""
    recorded = closed.state_of(store, approval_id)
    if recorded is not None:
        raise Conflict(f"approval request {approval_id} is already {recorded} (the audit"
                       " chain records it so)")


def answer_in_store(store: SQLiteStore, approval_id: str, answer: str, *, who: str,
                    now: float, scope: str | None = None, value: Any = None,
                    by_prefix: bool = False, signer: AuditKey | None = None,
                    shown: str | None = None, closed: ClosedOnChain | None = None
                    ) -> dict[str, Any]:
    """A front end without the broker's kernel (the CLI, the web page in another process):
    validate and write the answer (`by_prefix`: `approval_id` may be a unique prefix), signed
    by `signer` (default: this user's audit key; none, `NotFound`), over the request as shown
    if `shown` (its digest) is given; never to one the chain records closed (`closed`: what
    was read of it before). Refusals are kept for the broker to audit."""
    try:
        key = signer if signer is not None else user_key("an answer through the store")
        check_names(approval_id, scope)
        if by_prefix:
            approval_id = resolve_id(store, approval_id)
        row = store.get_approval(approval_id)
        check_form(row["id"])  # (before anything is written: red team 39)
        check_not_closed(store, closed or ClosedOnChain(whole=True), approval_id)
        check_answerable(row)
        alive = store.get_process(row["pid"])["state"] in LIVE
        state, scope, encoded = check_answer(row, answer, scope=scope, value=value, now=now,
                                             alive=alive)
        store.answer_approval(approval_id, state=state, answer=answer, who=bounded_who(who),
                              now=now, scope=scope, value=encoded, signer=key,
                              shown=shown_or_checked(row, shown))
    except LibosError as exc:
        store.log_approval_reject({"request": storable(str(approval_id)[:64]),
                                   "answer": storable(str(answer)[:32]),
                                   "who": bounded_who(who), "error": exc.code,
                                   "message": exc.message})
        raise
    return public(store.get_approval(approval_id))


class StoreApprovals:
    """The approval API over a store that a broker (now or later) owns: for front ends in
    another OS process (`libos web`). Answers land in the pending rows; the broker audits
    and applies them."""

    def __init__(self, store: SQLiteStore, now: Callable[[], float],
                 signer: AuditKey | None = None) -> None:
        self.store = store
        self.now = now
        self.signer = signer  # (None: this user's audit key, read at each answer)
        self.closed = ClosedOnChain(whole=True)  # (read on from where the last look ended)

    def approvals(self, state: str | None = "pending") -> list[dict[str, Any]]:
        return listed_as_recorded(self.store, self.closed, state)

    def approve(self, approval_id: str, always: bool = False, *, scope: str | None = None,
                who: str = "api", shown: str | None = None) -> dict[str, Any]:
        return self._answer(approval_id, "always" if always else "once", who, scope=scope,
                            shown=shown)

    def deny(self, approval_id: str, always: bool = False, *, scope: str | None = None,
             who: str = "api", shown: str | None = None) -> dict[str, Any]:
        return self._answer(approval_id, "deny-always" if always else "deny", who,
                            scope=scope, shown=shown)

    def answer(self, approval_id: str, value: Any, *, who: str = "api",
               shown: str | None = None) -> dict[str, Any]:
        return self._answer(approval_id, "answer", who, value=value, shown=shown)

    def _answer(self, approval_id: str, answer: str, who: str, **given: Any) -> dict[str, Any]:
        return answer_in_store(self.store, approval_id, answer, who=who, now=self.now(),
                               signer=self.signer, closed=self.closed, **given)


def bounded_who(who: Any) -> str:
    return storable(str(who)[:MAX_WHO])
