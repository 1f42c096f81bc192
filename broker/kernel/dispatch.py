"""Dispatch: table → validate → check → budget → audit intent → act → audit outcome.

This is the one place where authority is checked. Cheap syscalls run synchronously where
they arrive (`run_now`, usable from a sandbox worker thread); syscalls that wait (sleeps,
children, tool calls, approvals) run through `run` in trio.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.caps import Decision, NeedsApproval
from broker.errors import (
    Conflict,
    InvalidArgument,
    LibosError,
    LimitExceeded,
    NotCapable,
    exception_text,
)
from broker.kernel.audit_detail import (
    HOST_CALL,
    MAX_DETAIL_STRING,
    UNKNOWN_SYSCALL,
    audit_name,
    pack_payload,
    payload_digest,
    requested_name,
    summarize,
)
from broker.kernel.faults import CARRIED_OUT, STORE_FAULTS, UNDONE, store_conflict
from broker.kernel.group_commit import GroupCommit
from broker.kernel.held_call import HeldCall, chain_held_calls
from broker.kernel.read_commit import (
    answered_in_broker,
    held_until_outcome,
    lazy_intent,
    whole_record,
)
from broker.kernel.summary import cut
from broker.kernel.too_deep import check_depth, result_too_deep, too_deep_result, unencodable
from broker.store import AuditRecord, args_hash
from broker.store.audit import args_hash_sized
from broker.store.vouch import PAYLOAD_HASH, RESULT_HASH, digest
from broker.syscalls import TABLE, FollowUp, SyscallContext, SyscallDef
from sandboxes.base import WouldBlock

if TYPE_CHECKING:
    from broker.kernel.invocation import Invocation
    from broker.kernel.ports import DispatcherNeeds
    from broker.kernel.process import AgentProcess

log = logging.getLogger("libos.dispatch")


@dataclass(slots=True)
class Prepared:
    spec: SyscallDef
    ctx: SyscallContext
    args: dict[str, Any]
    decision: Decision | None
    resource: str | None
    intent_seq: int
    held: AuditRecord | None = None  # a read's intent, written with its outcome


_NO_ANSWER: tuple[Any, Any, bytes | None, str | None] = (None, None, None, None)
# Values that cannot change, so the same object is the same value (a number too: a builtin
# tool's answer is often its clock's or a size).
_IMMUTABLE = (str, bytes, float, int, bool)


def _chain(inv: Invocation) -> Callable[[], object]:
    return lambda: inv.id  # (asking for its id chains its held record)


def _taken_as_checked(inv: Invocation, spec: SyscallDef, args: Any) -> bool:
    """These very arguments passed `spec`'s own check when the builtin tool wrapping it was
    called (`ToolPlan.wraps`): taken once, by that syscall."""
    wrapped, checked = inv.checked  # type: ignore[misc]
    inv.checked = None
    return wrapped is spec and checked is args


class Dispatcher:
    def __init__(self, kernel: DispatcherNeeds) -> None:
        self.kernel = kernel
        self.group = GroupCommit(kernel.store)  # records of concurrent calls, one commit
        # The last answer a builtin tool's syscall gave, as its outcome recorded it (summary,
        # payload, the payload's hash): the tool's own outcome records the same object, and
        # takes them instead of summarizing, packing and hashing it again. Only immutable
        # values (the same object is the same value), or, from a builtin that wraps one
        # syscall (`Invocation.wraps`: the answer goes on to the tool's outcome untouched),
        # one its syscall made for the call and nobody else holds (`SyscallDef.fresh_answer`:
        # a registration's map); and only one small enough to keep a payload of (at most one
        # such answer is held); replaced whole (worker threads read it).
        self._answer: tuple[Any, Any, bytes | None, str | None] = _NO_ANSWER

    # -- the two entry points ------------------------------------------------------------------

    def run_now(self, proc: AgentProcess, inv: Invocation | None, name: str, args: Any) -> Any:
        """Run a non-blocking syscall synchronously; `WouldBlock` for one that must wait."""
        spec = TABLE.get(name)
        if spec is not None and spec.blocking:
            raise WouldBlock(name)
        prepared = self._prepare(proc, inv, name, args, can_wait=False)
        return self._finish(prepared, lambda: prepared.spec.handler(
            prepared.ctx, prepared.args, prepared.decision and prepared.decision.proof))

    async def run(self, proc: AgentProcess, inv: Invocation | None, name: str, args: Any, *,
                  spec: SyscallDef | None = None, follows: int | None = None,
                  checked: bool = False, host: bool = False) -> Any:
        """Run a syscall of the table, or `spec`: a host tool of this kernel (never found by
        name here, so no raw syscall reaches one around its capability). `follows`: the
        intent this call is a follow-up of (a redirect hop of `net.fetch`). `checked`: the
        kernel built `args` itself, of the shape its schema asks (`Kernel.call_tool`'s map, a
        planner's step's: `call_in_shape`), so it is not validated again; nothing a sandbox
        sends passes it, nor a map with a name out of shape. `host`: a host's own call
        (`Kernel.call_tool`), so marked in its intent (`HOST_CALL`). While other
        processes step too, its records are group-committed (`group_commit`): it waits for
        them before its effect and before its answer leaves."""
        group = self.group if self.group.grouping else None
        try:
            prepared = self._prepare(proc, inv, name, args, can_wait=True, spec=spec,
                                     follows=follows, defer=group is not None, checked=checked,
                                     host=host)
        except NeedsApproval as needed:
            prepared = await self._approve(proc, inv, name, args, needed, spec, follows)
        spec = prepared.spec
        proof = prepared.decision and prepared.decision.proof
        if not spec.blocking:
            act = lambda: spec.handler(prepared.ctx, prepared.args, proof)  # noqa: E731
            if group is None:
                return self._finish(prepared, act)
            if prepared.held is None:
                await self._intent_durable(prepared, group)
            result = self._finish(prepared, act, defer=True)
            if prepared.held is None or not answered_in_broker(inv):  # (else: as without
                await group.settled()  # a group, committed with the builtin's outcome)
            return result
        try:
            if group is not None and not lazy_intent(spec, prepared.decision):
                await group.durable()  # the intent, before the effect
            if spec.waits or self.kernel.bounds.syscalls.get(name) is not None:
                result = await self._held_slot(proc, inv, name, prepared, proof)
            else:  # (most, a tool call too: nothing held around it, no context manager made)
                result = await spec.handler(prepared.ctx, prepared.args, proof)
        except BaseException as exc:
            raise self._outcome_error(prepared, exc) from None
        if isinstance(result, FollowUp):
            # The call goes on as a call of its own (a redirect hop): checked, counted and
            # recorded like any other, its records linked to this one by `follows`.
            self._recorded(prepared, result.result)
            return await self.run(proc, inv, result.name, result.args,
                                  follows=prepared.intent_seq)
        # A builtin's answer stays in the broker until the tool's outcome, whose commit
        # carries this one (a registration: intent, then rows and both outcomes, two commits).
        self._recorded(prepared, result, defer=group is not None or answered_in_broker(inv))
        if group is not None:
            await group.settled()  # (the outcome is decided: it waits for a store that fails)
        return result

    async def _held_slot(self, proc: AgentProcess, inv: Invocation | None, name: str,
                         prepared: Prepared, proof: Any) -> Any:
        """A blocking syscall's effect with its slot held, if its kind is bounded, and counted
        as waiting, if it waits."""
        spec = prepared.spec
        async with self.kernel.bounds.syscall(proc.pid, inv, name):  # a slot, if bounded
            if spec.waits:
                async with self.kernel.waiting(proc, name):
                    return await spec.handler(prepared.ctx, prepared.args, proof)
            return await spec.handler(prepared.ctx, prepared.args, proof)

    async def _intent_durable(self, prepared: Prepared, group: GroupCommit) -> None:
        try:
            await group.durable()
        except BaseException as exc:
            raise self._outcome_error(prepared, exc) from None

    # -- stages ------------------------------------------------------------------------------

    def _record(self, proc: AgentProcess, inv: Invocation | None, phase: str, syscall: str,
                resource: str | None, args_hash: str | None, detail: dict[str, Any],
                cap_id: str | None = None) -> AuditRecord:
        """A record naming `syscall`: a name vetted by `audit_name`, or a resolved spec's.
        (Positional: a record is made twice per call, and keywords cost more than it.)"""
        if inv is None:
            return AuditRecord(phase, syscall, proc.pid, None, None, resource, args_hash,
                               cap_id, detail)
        return AuditRecord(phase, syscall, proc.pid, inv.id, inv.tool, resource, args_hash,
                           cap_id, detail)

    def _reject(self, proc: AgentProcess, inv: Invocation | None, phase: str, name: str,
                exc: LibosError, args: Any, resource: str | None = None,
                spec: SyscallDef | None = None, follows: int | None = None) -> None:
        detail = {"error": exc.code, "message": cut(exc.message), "args": summarize(args)}
        if "labels" in exc.detail:  # a flow a label bound refused: the labels it refused
            detail["labels"] = exc.detail["labels"]
        if follows is not None:
            detail["follows"] = follows
        syscall = spec.name if spec is not None else audit_name(name)
        if syscall == UNKNOWN_SYSCALL:
            detail["name"] = requested_name(name)
        self.kernel.store.append_audit(self._record(
            proc, inv, phase, syscall, resource, args_hash(args), detail))
        if phase == "denied":
            self.kernel.events.emit(proc.pid, "denied", syscall=syscall,
                                    resource=resource, message=exc.message)

    def _prepare(self, proc: AgentProcess, inv: Invocation | None, name: str, args: Any,
                 *, can_wait: bool, approved: Decision | None = None,
                 spec: SyscallDef | None = None, follows: int | None = None,
                 defer: bool = False, checked: bool = False, host: bool = False) -> Prepared:
        kernel = self.kernel
        kernel.require_live(proc)
        if spec is None:
            spec = TABLE.get(name) if isinstance(name, str) else None
        if args is None:
            args = {}
        try:
            ahash, text_size = args_hash_sized(args)
            check_depth(args, text_size)
        except (ValueError, RecursionError, TypeError) as error:  # (ValueError: a cycle)
            exc, shown = unencodable(error, args)
            self._count(proc, inv, name, shown, spec, follows)
            self._reject(proc, inv, "rejected", name, exc, shown, spec=spec, follows=follows)
            raise exc from None
        if spec is None:
            exc: LibosError = NotCapable(f"no such syscall {requested_name(name)!r}")
            self._count(proc, inv, name, args)
            self._reject(proc, inv, "denied", name, exc, args)
            raise exc
        try:
            if checked:
                pass  # (built by the kernel to its schema: `run`'s `checked`)
            elif inv is None or inv.checked is None or not _taken_as_checked(inv, spec, args):
                spec.check_args(args)
        except InvalidArgument as exc:
            self._count(proc, inv, name, args, spec, follows)
            self._reject(proc, inv, "rejected", name, exc, args, spec=spec, follows=follows)
            raise
        ctx = SyscallContext(proc, inv, kernel.services, ahash)
        decision = approved
        if decision is None and spec.authorize is not None:
            try:
                decision = spec.authorize(ctx, args)
            except NeedsApproval:
                if not can_wait:
                    raise WouldBlock(name) from None  # counted when it is run to wait
                self._count(proc, inv, name, args, spec, follows)
                raise
            except LibosError as exc:
                phase = "denied" if isinstance(exc, NotCapable) else "rejected"
                self._count(proc, inv, name, args, spec, follows)
                self._reject(proc, inv, phase, name, exc, args, exc.detail.get("resource"),
                             spec=spec, follows=follows)
                raise
        if approved is None:  # an approved call was counted when it asked
            self._count(proc, inv, name, args, spec, follows)
        proof = decision.proof if decision else None
        spends = decision.spends if decision else None
        if proof is not None:
            resource = proof.resource
        else:
            resource = spec.resource(ctx, args) if spec.resource else None
        held = spends is None and spec.idempotent and held_until_outcome(spec, decision)
        # (A held read's record names its invocation when it is written: asking for the id
        # now would chain a `tool.call` record that may yet be written whole.)
        record = self._record(proc, None if held else inv, "intent", spec.name, resource,
                              ahash, {"args": summarize(args)}, proof.cap_id if proof else None)
        if held and inv is not None:
            record.tool = inv.tool
        label = ctx.label
        if label:
            record.detail["labels"] = sorted(label)  # of the data the call carries
        if spec.idempotent and spec.name not in TABLE:
            record.detail["read_only"] = True  # a host tool's: recovery may run it again
        if follows is not None:
            record.detail["follows"] = follows
        if host:
            record.detail[HOST_CALL] = True
        if decision is not None and decision.approval:
            record.detail["approval"] = decision.approval  # links request, answer, effect
        payload = pack_payload(args, text_size) if spec.keep_args else None
        if payload is not None:
            record.detail[PAYLOAD_HASH] = digest(payload)  # the chain vouches for the payload
        if held:
            return Prepared(spec, ctx, args, decision, resource, 0, held=record)
        if inv is None and proc.held_calls and spec.name == "tool.call":
            chain_held_calls(proc)  # (the calls begun before it come first in the chain)
        if spends is not None:
            # The use is spent atomically with the intent: both are durable, or neither.
            try:
                remaining = kernel.caps.spend(spends)
                seq = kernel.store.append_audit(
                    record, spend=spends, spent_uses=remaining.uses if remaining else None,
                    payload=payload)
            except (NotCapable, Conflict) as exc:
                # Someone else (another thread's call) took the last use first.
                refused = NotCapable(f"{name}: {exc.message}", resource=resource)
                self._reject(proc, inv, "denied", name, refused, args, resource, spec=spec,
                             follows=follows)
                raise refused from None
        elif lazy_intent(spec, decision):  # chained by the tool's first record, or outcome
            ctx.held_call = call = HeldCall(record, payload, kernel.store)
            if inv is None:
                proc.held_calls.append(call)
            return Prepared(spec, ctx, args, decision, resource, 0)
        else:
            seq = kernel.store.append_audit(record, payload=payload, defer=defer)
        ctx.intent_seq = seq
        return Prepared(spec, ctx, args, decision, resource, seq)

    def _count(self, proc: AgentProcess, inv: Invocation | None, name: str, args: Any,
               spec: SyscallDef | None = None, follows: int | None = None) -> None:
        """Every attempt counts once, when its fate is known (refused: an unknown name, bad
        arguments, a denial; allowed; or put to a person), against the call tree's
        `max_syscalls` and the process's syscall budget. The attempt that crosses a cap is
        recorded instead; later ones in the same call tree are refused without a record. The
        `LimitExceeded` ends the call (the driver kills its sandbox)."""
        try:
            if inv is not None:
                inv.count_syscall()
            # (A budget that runs out kills: a held call's record is chained before that.)
            self.kernel.budgets.charge(proc, "syscalls", None if inv is None else _chain(inv))
        except LimitExceeded as exc:
            if not exc.detail.get("quiet"):
                self._reject(proc, inv, "rejected", name, exc, args, spec=spec,
                             follows=follows)
            raise LimitExceeded(exc.message, ends_call=True) from None

    def _finish(self, prepared: Prepared, act: Callable[[], Any], defer: bool = False) -> Any:
        try:
            result = act()
        except BaseException as exc:
            raise self._outcome_error(prepared, exc) from None
        return self._recorded(prepared, result, defer)

    def _recorded(self, prepared: Prepared, result: Any, defer: bool = False) -> Any:
        """`_outcome_ok` after the effect. SQLite's error refusing the record goes on as it
        is (a step's own ends its process), marked: whoever makes it a `Conflict` (a builtin
        tool's call, a host's) says the call was carried out, never "nothing of it was done"
        (`store_conflict`). What the call would take back if its record failed
        (`SyscallContext.on_unrecorded`: a registration) is, before its caller hears of it; a
        builtin's call, whose record waits for the tool's outcome, hands it to that call."""
        try:
            result = self._outcome_ok(prepared, result, defer)
        except STORE_FAULTS as exc:
            self._take_back(prepared.ctx, exc)
            if getattr(exc, CARRIED_OUT, None) is None:
                setattr(exc, CARRIED_OUT, prepared.spec.name)
                if isinstance(exc, Conflict):  # (PostgreSQL's, typed already: said so now)
                    exc.message = store_conflict(exc).message
            raise
        ctx = prepared.ctx
        if ctx.unrecorded is not None:
            undo, ctx.unrecorded = ctx.unrecorded, None
            inv = ctx.invocation
            outer = inv.outer if answered_in_broker(inv) else None  # type: ignore[union-attr]
            if outer is not None:
                outer.on_unrecorded(*undo)  # (else: committed now, or waited for until it is)
        return result

    @staticmethod
    def _take_back(ctx: SyscallContext, exc: BaseException) -> None:
        """The commit of the call's record failed: take back what waited on it (each undo
        says what it took back, for the caller's message: `store_conflict`)."""
        undo, ctx.unrecorded = ctx.unrecorded, None
        taken = [said for said in (u() for u in undo or ()) if said is not None]
        if taken:
            setattr(exc, UNDONE, [*getattr(exc, UNDONE, ()), *taken])

    def _outcome_ok(self, prepared: Prepared, result: Any, defer: bool = False) -> Any:
        """Record the outcome with the full result beside it (bounded), so the call can be
        replayed from the audit; the record carries the payload's hash."""
        kept = self._answer
        if result is kept[0] and result is not None:  # a builtin's answer, as its syscall's
            self._answer = _NO_ANSWER
            shown, payload, hashed = kept[1], kept[2], kept[3]
        else:
            shown, payload = summarize(result), pack_payload(result)
            if result_too_deep(prepared.spec.name, result, payload):
                raise self._outcome_error(prepared, too_deep_result())
            hashed = None if payload is None else payload_digest(payload)
            inv = prepared.ctx.invocation
            if payload is not None and answered_in_broker(inv) and (
                    type(result) in _IMMUTABLE
                    or (prepared.spec.fresh_answer and inv.wraps)):  # type: ignore[union-attr]
                self._answer = (result, shown, payload, hashed)  # for the tool's outcome
        added = prepared.ctx.outcome_detail
        detail = {"ok": True, "intent": prepared.intent_seq, "result": shown}
        if added:  # (what the handler adds comes first, as it always did)
            detail = {**added, **detail}
        self._absorb_labels(prepared, detail)
        if hashed is not None:
            detail[RESULT_HASH] = hashed
        self._append_outcome(prepared, detail, payload, defer)
        return result

    def _outcome_error(self, prepared: Prepared, exc: BaseException) -> BaseException:
        """Record a failed effect; returns what to raise. A primitive's own bug becomes a
        typed error for the caller (and a log line here), never a broker traceback; a store
        that refused its write (SQLite's own error: each write rolled back whole) is the
        typed "try again" `Conflict`, not a bug."""
        if isinstance(exc, sqlite3.Error):
            exc = store_conflict(exc)
        raised = exc
        if isinstance(exc, LibosError):
            detail = {"error": exc.code, "message": cut(exc.message)}
        else:
            detail = {"error": type(exc).__name__,
                      "message": exception_text(exc)[:MAX_DETAIL_STRING]}
            if isinstance(exc, Exception):
                log.error("primitive %s failed", prepared.spec.name, exc_info=exc)
                raised = InvalidArgument(f"{prepared.spec.name} failed: {type(exc).__name__}")
        detail = {**prepared.ctx.outcome_detail, **detail, "ok": False,
                  "intent": prepared.intent_seq}
        # A failure tells something of the source too (that a secret file is not text, say).
        self._absorb_labels(prepared, detail)
        try:
            self._append_outcome(prepared, detail, None)
        except STORE_FAULTS as failed:
            self._take_back(prepared.ctx, failed)
            raise
        prepared.ctx.unrecorded = None  # (committed with this record, or waiting with it)
        return raised

    def _absorb_labels(self, prepared: Prepared, detail: dict[str, Any]) -> None:
        labels = self.kernel.labels.absorb(prepared.spec.kind, prepared.resource,
                                           prepared.decision, prepared.ctx)
        if labels:
            detail["labels"] = sorted(labels)  # of the result, now joined into the caller

    def _append_outcome(self, prepared: Prepared, detail: dict[str, Any],
                        payload: bytes | None, defer: bool = False) -> None:
        if prepared.held is not None:  # the intent and the outcome: one record
            record = whole_record(prepared.held, detail)
            inv = prepared.ctx.invocation
            if inv is not None:
                if inv.in_broker:  # a builtin's read: with the tool's outcome
                    call = inv.held
                    if call is not None and call.hold(record, payload):
                        return  # (after the tool's own record, if that is written whole)
                    defer = True
                record.inv = inv.id
            prepared.intent_seq = self.kernel.store.append_audit(record, payload=payload,
                                                                 defer=defer)
            return
        call = prepared.ctx.held_call
        if call is not None:
            if prepared.ctx.invocation is None:
                held = prepared.ctx.process.held_calls  # type: ignore[union-attr]
                if call in held:
                    held.remove(call)
            if call.seq is None:  # nothing in the call needed its record: one, whole
                prepared.intent_seq = call.whole(detail, payload, defer)
                return
            detail["intent"] = call.seq
        self.kernel.store.append_audit(self._outcome(prepared, detail), payload=payload,
                                       defer=defer)

    def _outcome(self, prepared: Prepared, detail: dict[str, Any]) -> AuditRecord:
        ctx = prepared.ctx
        return self._record(ctx.process, ctx.invocation,  # type: ignore[arg-type]
                            "outcome", prepared.spec.name, prepared.resource, ctx.args_hash,
                            detail)

    async def _approve(self, proc: AgentProcess, inv: Invocation | None, name: str, args: Any,
                       needed: NeedsApproval, given: SyscallDef | None,
                       follows: int | None = None) -> Prepared:
        """Only an `ask` capability covers this call: ask a person (see `approvals.py`), then
        run exactly the approved arguments under the decision the answer produced, re-checked
        for exactly these arguments. No answer by the deadline is a denial (fail closed)."""
        asked = {} if args is None else args
        spec = given or TABLE[name]

        def authorize() -> Decision:
            assert spec.authorize is not None
            ctx = SyscallContext(proc, inv, self.kernel.services, args_hash(asked))
            return spec.authorize(ctx, asked)

        decision = await self.kernel.queue.ask(proc, inv, spec.name, asked, needed, authorize)
        return self._prepare(proc, inv, name, args, can_wait=True, approved=decision,
                             spec=given, follows=follows)
