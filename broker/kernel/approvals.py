"""The approval queue: a person stays in charge of what an `ask` capability covers.

Flow. A syscall that only an `effect="ask"` capability covers raises `NeedsApproval` in the
check; the dispatcher hands it to `Kernel.await_approval`, which lands here:

1. `create` writes a durable request (table `approvals`): an unguessable id, the process,
   tool, syscall, resource, the exact arguments and their hash, the reason the tool gave (the
   optional `reason` argument every checked syscall accepts), a deadline. It is audited
   (phase `ask`) and the process waits (state `waiting`, reason `approval <id>`).
2. A person answers through a front end: the Python API (`Kernel.approve/deny/answer`), the
   CLI (`libos approve ID`), the web page, or an auto-policy. A front end in another OS
   process only writes the answer into the pending row (it may not write the audit); the
   broker notices (each waiter polls its row) and audits and applies it itself.
3. Applying an answer, exactly once (`applied` is set in the same transaction as the grants):
   * `once`: a one-shot capability (uses=1) bound to the hash of exactly the asked arguments,
     derived from the `ask` capability. The dispatcher re-checks the call, finds the grant and
     spends it atomically with the intent record; other arguments are `NotCapable`.
   * `always`: a standing `allow` capability for the resource (or a wider scope the person
     chose, never wider than the `ask` capability), audited as `admin`.
   * `deny`: `ApprovalDenied`. `deny-always`: a `deny` capability, then `ApprovalDenied`.
   * no answer by the deadline: the request expires, `ApprovalDenied`.
   The audit links them: the `ask` record, the `admin` answer record and the call's `intent`
   record all carry the request id in their detail.

Questions (`human.ask`) use the same table (kind `question`) and front ends; their answer is a
JSON value checked against the question's schema or choices.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import fastjsonschema
import trio

from broker.caps import CapSpec, Decision, NeedsApproval
from broker.caps.capability import scope_covers, scope_within
from broker.caps.scope import MAX_SCOPE_LEN, validate_scope
from broker.errors import (
    ApprovalDenied,
    Cancelled,
    Conflict,
    InvalidArgument,
    LibosError,
    NotCapable,
    NotFound,
)
from broker.store import AuditRecord, SQLiteStore, args_hash

if TYPE_CHECKING:
    from broker.kernel.kernel import Kernel
    from broker.kernel.process import AgentProcess
    from broker.kernel.tools import Invocation

log = logging.getLogger("libos.approvals")

DEFAULT_TIMEOUT = 3600.0
POLL_SECONDS = 0.15
IDLE_SWEEP_TICKS = 20  # with nobody waiting, sweep every 3 s
MAX_REASON = 1000
MAX_WHO = 128

CAPABILITY_ANSWERS = ("once", "always", "deny", "deny-always")
QUESTION_ANSWERS = ("answer", "deny")


def new_approval_id() -> str:
    return "apr_" + secrets.token_hex(12)


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def encode_args(args: Any) -> str:
    """The exact arguments as JSON (bytes as {"$bytes": base64}), for people to read."""
    return json.dumps(_encode(args), ensure_ascii=False, sort_keys=True, default=repr)


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A request as front ends show it (args and question decoded)."""
    out = {k: row[k] for k in ("id", "kind", "pid", "tool", "syscall", "resource", "args_hash",
                               "reason", "created", "deadline", "state", "answer", "who",
                               "scope")}
    out["right"] = f"{row['cap_kind']}:{row['cap_right']}" if row.get("cap_kind") else None
    out["ask_scope"] = row.get("cap_scope")
    out["args"] = json.loads(row["args"])
    out["args_text"] = row["args"]  # whole: a surface shows all of it, or offers only "deny"
    out["question"] = json.loads(row["question"]) if row.get("question") else None
    out["value"] = json.loads(row["value"]) if row.get("value") else None
    return out


def check_answer(row: dict[str, Any], answer: str, *, scope: str | None = None,
                 value: Any = None, now: float) -> tuple[str, str | None, str | None]:
    """Validate an answer against its request, before anything is written. Returns the new
    state, the scope to grant and the JSON value. Shared by every front end, so the CLI in
    another OS process refuses exactly what the broker would."""
    if row["state"] != "pending":
        raise Conflict(f"approval request {row['id']} is already {row['state']}")
    if row["deadline"] <= now:
        raise Conflict(f"approval request {row['id']} has expired")
    if row["kind"] == "question":
        if answer not in QUESTION_ANSWERS:
            raise InvalidArgument(f"{row['id']} is a question: answer it (or deny it)")
        if scope is not None:
            raise InvalidArgument("a question's answer takes no scope")
        if answer == "deny":
            return "denied", None, None
        check_value(json.loads(row["question"]), value)
        return "approved", None, json.dumps(value, ensure_ascii=False)
    if answer not in CAPABILITY_ANSWERS:
        raise InvalidArgument(f"unknown answer {answer!r}; one of {CAPABILITY_ANSWERS}")
    if value is not None:
        raise InvalidArgument("an approval takes no value")
    if answer in ("once", "deny"):
        if scope is not None:
            raise InvalidArgument(f"{answer!r} is bound to the exact call; it takes no scope")
        return ("approved" if answer == "once" else "denied"), None, None
    scope = validate_scope(row["resource"] if scope is None else scope)
    if not scope_covers(row["cap_kind"], scope, row["resource"], deny=answer == "deny-always"):
        raise InvalidArgument(f"scope {scope!r} does not cover the asked {row['resource']!r}")
    if answer == "always" and not scope_within(row["cap_kind"], scope, row["cap_scope"]):
        # Approving may not widen what was asked: never beyond the `ask` capability.
        raise NotCapable(f"scope {scope!r} is wider than the asking capability's "
                         f"{row['cap_scope']!r}")
    return ("approved" if answer == "always" else "denied"), scope, None


def check_value(question: dict[str, Any], value: Any) -> None:
    choices = question.get("choices")
    if choices is not None and value not in choices:
        raise InvalidArgument("the answer is not one of the choices")
    schema = question.get("schema")
    if schema is not None:
        try:
            fastjsonschema.compile(schema)(value)
        except fastjsonschema.JsonSchemaException as exc:
            raise InvalidArgument(f"the answer does not fit the schema: {exc.message}") from None
    if choices is None and schema is None and not isinstance(value, str):
        raise InvalidArgument("the answer must be text")


def answer_in_store(store: SQLiteStore, approval_id: str, answer: str, *, who: str,
                    now: float, scope: str | None = None, value: Any = None) -> dict[str, Any]:
    """A front end without the broker's kernel (the CLI, the web page in another process):
    validate and write the answer. Refusals are kept for the broker to audit."""
    try:
        row = store.get_approval(approval_id)
        state, scope, encoded = check_answer(row, answer, scope=scope, value=value, now=now)
        store.answer_approval(approval_id, state=state, answer=answer, who=_who(who), now=now,
                              scope=scope, value=encoded)
    except LibosError as exc:
        store.log_approval_reject({"request": str(approval_id)[:64], "answer": str(answer)[:32],
                                   "who": _who(who), "error": exc.code,
                                   "message": exc.message})
        raise
    return public(store.get_approval(approval_id))


class StoreApprovals:
    """The approval API over a store that a broker (now or later) owns: for front ends in
    another OS process (`libos web`). Answers land in the pending rows; the broker audits
    and applies them."""

    def __init__(self, store: SQLiteStore, now: Callable[[], float]) -> None:
        self.store = store
        self.now = now

    def approvals(self, state: str | None = "pending") -> list[dict[str, Any]]:
        return [public(r) for r in self.store.list_approvals(state)]

    def approve(self, approval_id: str, always: bool = False, *, scope: str | None = None,
                who: str = "api") -> dict[str, Any]:
        return answer_in_store(self.store, approval_id, "always" if always else "once",
                               who=who, now=self.now(), scope=scope)

    def deny(self, approval_id: str, always: bool = False, *, scope: str | None = None,
             who: str = "api") -> dict[str, Any]:
        return answer_in_store(self.store, approval_id, "deny-always" if always else "deny",
                               who=who, now=self.now(), scope=scope)

    def answer(self, approval_id: str, value: Any, *, who: str = "api") -> dict[str, Any]:
        return answer_in_store(self.store, approval_id, "answer", who=who, now=self.now(),
                               value=value)


def _who(who: Any) -> str:
    return str(who)[:MAX_WHO]


class FrontEnd(Protocol):
    """Something that shows requests to a person (or a policy) and may answer them."""

    def requested(self, request: dict[str, Any], queue: ApprovalQueue) -> None: ...


class AutoPolicy:
    """An auto-policy front end: `decide(request)` returns an answer (`once`, `deny`, ... or
    ("answer", value) for a question), or None to leave the request to a person."""

    def __init__(self, decide: Callable[[dict[str, Any]], Any], who: str = "auto-policy"
                 ) -> None:
        self.decide = decide
        self.who = who

    def requested(self, request: dict[str, Any], queue: ApprovalQueue) -> None:
        verdict = self.decide(request)
        if verdict is None:
            return
        if isinstance(verdict, tuple):
            queue.answer(request["id"], verdict[0], value=verdict[1], who=self.who)
        else:
            queue.answer(request["id"], verdict, who=self.who)


class ApprovalQueue:
    def __init__(self, kernel: Kernel, *, timeout: float = DEFAULT_TIMEOUT,
                 front_ends: Iterable[FrontEnd] = ()) -> None:
        self.kernel = kernel
        self.store = kernel.store
        self.timeout = timeout
        self.front_ends = list(front_ends)
        self._waiters: dict[str, trio.Event] = {}

    # -- requests ------------------------------------------------------------------------------

    def create(self, proc: AgentProcess, inv: Invocation | None, syscall: str, args: Any, *,
               resource: str, needed: NeedsApproval | None = None,
               question: dict[str, Any] | None = None,
               timeout: float | None = None) -> dict[str, Any]:
        now = self.kernel.clock.now()
        reason = args.get("reason") if isinstance(args, dict) else None
        ahash = args_hash(args)
        for old in self.store.list_approvals("pending"):
            # The same call of the same process, asked before a restart and not answered
            # yet: it resumes waiting on that request (a person may already be looking at it).
            if (old["pid"], old["syscall"], old["args_hash"], old["cap_id"]) == (
                    proc.pid, syscall, ahash, needed.cap.id if needed else None) and (
                    old["id"] not in self._waiters and old["deadline"] > now):
                self._waiters[old["id"]] = trio.Event()
                self.kernel.events.emit(proc.pid, "approval", request=old["id"],
                                        type=old["kind"], syscall=syscall, resource=resource,
                                        resumed=True)
                return old
        row = {
            "id": new_approval_id(), "kind": "question" if question is not None else "capability",
            "pid": proc.pid, "inv": inv.id if inv else None, "tool": inv.tool if inv else None,
            "syscall": syscall, "resource": resource,
            "cap_kind": needed.kind if needed else None,
            "cap_right": needed.right if needed else None,
            "cap_id": needed.cap.id if needed else None,
            "cap_scope": needed.cap.scope if needed else None,
            "args": encode_args(args), "args_hash": ahash,
            "reason": str(reason)[:MAX_REASON] if reason is not None else None,
            "question": json.dumps(question, ensure_ascii=False) if question is not None
            else None,
            "created": now, "deadline": now + (self.timeout if timeout is None else timeout),
            "state": "pending",
        }
        self.store.insert_approval(row)
        self.store.append_audit(AuditRecord(
            phase="ask", syscall=syscall, pid=proc.pid, inv=row["inv"], tool=row["tool"],
            resource=resource, args_hash=ahash, cap_id=row["cap_id"],
            detail={"request": row["id"], "kind": row["kind"], "reason": row["reason"],
                    "deadline": row["deadline"]}))
        self.kernel.events.emit(proc.pid, "approval", request=row["id"], type=row["kind"],
                                syscall=syscall, resource=resource)
        self._waiters[row["id"]] = trio.Event()
        request = public(self.store.get_approval(row["id"]))
        for front_end in self.front_ends:
            try:
                front_end.requested(request, self)
            except LibosError:
                pass  # a refused automatic answer leaves the request to a person
            except Exception:
                log.exception("approval front end %r failed", front_end)
        return row

    async def wait(self, proc: AgentProcess, row: dict[str, Any]) -> dict[str, Any]:
        """Wait for the answer (or the deadline). The answered row is returned; the caller
        applies it."""
        approval_id = row["id"]
        event = self._waiters.setdefault(approval_id, trio.Event())
        try:
            async with self.kernel.waiting(proc, f"approval {approval_id}"):
                while True:
                    current = self.store.get_approval(approval_id)
                    if current["state"] != "pending":
                        return current
                    if self.kernel.clock.now() >= current["deadline"]:
                        self._expire(current)
                        return self.store.get_approval(approval_id)
                    with trio.move_on_after(POLL_SECONDS):
                        await event.wait()
        except BaseException:
            with trio.CancelScope(shield=True):
                # Its process is gone: nobody will run the call. (A broker that is merely
                # closing leaves the request pending, to be resumed.)
                if not proc.alive and self.store.settle_approval(
                        approval_id, "cancelled", self.kernel.clock.now()):
                    self._audit_settled(self.store.get_approval(approval_id), "cancelled")
            raise
        finally:
            self._waiters.pop(approval_id, None)

    def cancel(self, approval_id: str) -> bool:
        """Settle a pending request as cancelled, audited: the call that raised it is gone
        (a front end's session ended). False if it was settled already."""
        if not self.store.settle_approval(approval_id, "cancelled", self.kernel.clock.now()):
            return False
        self._audit_settled(self.store.get_approval(approval_id), "cancelled")
        return True

    def _expire(self, row: dict[str, Any]) -> None:
        if self.store.settle_approval(row["id"], "expired", self.kernel.clock.now()):
            self._audit_settled(row, "expired")

    def _audit_settled(self, row: dict[str, Any], state: str) -> None:
        self.store.append_audit(AuditRecord(
            phase="denied" if state == "expired" else "admin", syscall=row["syscall"],
            pid=row["pid"], inv=row["inv"], tool=row["tool"], resource=row["resource"],
            args_hash=row["args_hash"], cap_id=row["cap_id"],
            detail={"request": row["id"], "state": state, "error": ApprovalDenied.code,
                    "message": f"no answer to {row['id']} by its deadline"
                    if state == "expired" else f"{row['id']} cancelled: its process ended"}))

    # -- answers -----------------------------------------------------------------------------

    def answer(self, approval_id: str, answer: str, *, scope: str | None = None,
               value: Any = None, who: str = "api") -> dict[str, Any]:
        """The in-process front end: validate, write, and wake the waiter (or, with nobody
        waiting in this broker, apply at once so a resumed call finds the grant)."""
        now = self.kernel.clock.now()
        try:
            if not isinstance(approval_id, str):
                raise NotFound("no such approval request")
            row = self.store.get_approval(approval_id)
            state, scope, encoded = check_answer(row, answer, scope=scope, value=value, now=now)
            self.store.answer_approval(approval_id, state=state, answer=answer, who=_who(who),
                                       now=now, scope=scope, value=encoded)
        except LibosError as exc:
            self._audit_reject({"request": str(approval_id)[:64], "answer": str(answer)[:32],
                                "who": _who(who), "error": exc.code, "message": exc.message})
            raise
        self._deliver(approval_id)
        return public(self.store.get_approval(approval_id))

    def _audit_reject(self, detail: dict[str, Any]) -> None:
        self.store.append_audit(AuditRecord(phase="rejected", syscall="approval.answer",
                                            resource=detail.get("request"), detail=detail))

    def _deliver(self, approval_id: str) -> None:
        event = self._waiters.get(approval_id)
        if event is not None:
            event.set()
        else:
            self.apply(self.store.get_approval(approval_id))

    def sweep(self) -> None:
        """Bring the table and the audit up to date: refusals logged by other OS processes,
        answers written by them, requests past their deadline that nobody waits for."""
        for detail in self.store.take_approval_rejects():
            detail.pop("ts", None)
            self._audit_reject(detail)
        for row in self.store.unapplied_answers():
            if row["id"] in self._waiters:
                self._waiters[row["id"]].set()
            else:
                self.apply(row)
        for row in self.store.expired_approvals(self.kernel.clock.now()):
            if row["id"] not in self._waiters:
                self._expire(row)

    async def watch(self) -> None:
        """Background task: notice answers from other OS processes while requests wait."""
        tick = 0
        while True:
            await trio.sleep(POLL_SECONDS)
            tick += 1
            if self._waiters or tick % IDLE_SWEEP_TICKS == 0:
                try:
                    self.sweep()
                except Exception:
                    log.exception("approval sweep failed")

    def apply(self, row: dict[str, Any]) -> str | None:
        """Audit an answer and grant what it grants, exactly once. Returns the granted
        capability's id (None for a plain deny or a question)."""
        if row["applied"] is not None:
            return row["grant_id"]
        answer = row["answer"]
        entries = []
        if row["kind"] == "capability" and answer != "deny":
            try:
                ask = self.kernel.caps.get(row["cap_id"]) if row["cap_id"] else None
            except NotFound:
                ask = None
            if answer == "once":
                # Bound to the exact arguments. A resource too long to be a scope (a command
                # with a long environment) is covered by the asking scope instead.
                scope = (row["resource"] if len(row["resource"]) <= MAX_SCOPE_LEN
                         else row["cap_scope"])
                spec = CapSpec(row["cap_kind"], scope, frozenset({row["cap_right"]}), uses=1)
                args_bound: str | None = row["args_hash"]
            else:
                spec = CapSpec(row["cap_kind"], row["scope"], frozenset({row["cap_right"]}),
                               effect="allow" if answer == "always" else "deny")
                args_bound = None
            if ask is None and answer != "deny-always":
                # The asking capability was revoked meanwhile: nothing to derive a grant from.
                answer = "revoked"
            else:
                entries.append(self.kernel.caps.grant(
                    row["pid"], spec, parent=ask.id if ask else None, args_hash=args_bound))
                if answer == "deny-always":
                    # A deny rule reaches the whole lineage below, as it would at a spawn.
                    entries += [self.kernel.caps.grant(child, spec, parent=entries[0][1].id)
                                for child in self.kernel.descendants(row["pid"])]
        grant_id = entries[0][1].id if entries else None
        self.store.append_audit(AuditRecord(
            phase="admin", syscall="approval.answer", pid=row["pid"], inv=row["inv"],
            tool=row["tool"], resource=row["resource"], args_hash=row["args_hash"],
            cap_id=grant_id,
            detail={"request": row["id"], "syscall": row["syscall"], "answer": row["answer"],
                    "who": row["who"], "scope": row["scope"], "grant": grant_id,
                    **({"effect": "the asking capability was revoked; nothing granted"}
                       if answer == "revoked" else {})}))
        try:
            self.store.apply_approval(row["id"], entries, grant_id)
        except Conflict:
            for _, cap in entries:
                self.kernel.caps.revoke(cap.id)
            raise
        self.kernel.events.emit(row["pid"], "approval", request=row["id"], answer=row["answer"])
        return grant_id

    # -- the waiting call ---------------------------------------------------------------------

    async def ask(self, proc: AgentProcess, inv: Invocation | None, name: str, args: Any,
                  needed: NeedsApproval, authorize: Callable[[], Decision]) -> Decision:
        row = self.create(proc, inv, name, args, resource=needed.resource, needed=needed)
        row = await self.wait(proc, row)
        if row["state"] == "expired":
            raise ApprovalDenied(f"{name} on {needed.resource!r}: no answer by the deadline "
                                 f"(request {row['id']})")
        if row["state"] == "cancelled":
            raise Cancelled(f"approval request {row['id']} was cancelled")
        grant = self.apply(row)
        if row["answer"] in ("deny", "deny-always") or grant is None:
            why = (f"answered {row['answer']!r}" if row["answer"] in ("deny", "deny-always")
                   else "approved, but the asking capability was revoked meanwhile")
            exc = ApprovalDenied(f"{name} on {needed.resource!r}: {why} (request {row['id']})")
            self.store.append_audit(AuditRecord(
                phase="denied", syscall=name, pid=proc.pid, inv=inv.id if inv else None,
                tool=inv.tool if inv else None, resource=needed.resource,
                args_hash=row["args_hash"], cap_id=grant or needed.cap.id,
                detail={"request": row["id"], "error": exc.code, "message": exc.message}))
            raise exc
        try:
            decision = authorize()
        except NeedsApproval:
            # The re-check reached another resource (a path that now resolves elsewhere).
            raise ApprovalDenied(f"{name}: the approved call no longer matches what was asked"
                                 ) from None
        return Decision(decision.proof, decision.spends, approval=row["id"])

    async def question(self, proc: AgentProcess, inv: Invocation | None, args: dict[str, Any],
                       resource: str) -> Any:
        question = {"text": args["question"]}
        for key in ("schema", "choices"):
            if key in args:
                question[key] = args[key]
        if "schema" in question:
            try:
                fastjsonschema.compile(question["schema"])
            except (fastjsonschema.JsonSchemaDefinitionException, TypeError, ValueError) as exc:
                raise InvalidArgument(f"human.ask: bad answer schema: {exc}") from None
        row = self.create(proc, inv, "human.ask", args, resource=resource, question=question,
                          timeout=args.get("timeout"))
        row = await self.wait(proc, row)
        if row["state"] == "cancelled":
            raise Cancelled(f"question {row['id']} was cancelled")
        if row["state"] == "expired":
            raise ApprovalDenied(f"no answer to question {row['id']} by its deadline")
        self.apply(row)
        if row["state"] == "denied":
            raise ApprovalDenied(f"question {row['id']} was declined")
        return json.loads(row["value"])
