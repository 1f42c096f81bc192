"""The approval queue: a person stays in charge of what an `ask` capability covers.

Flow. A syscall that only an `effect="ask"` capability covers raises `NeedsApproval` in the
check; the dispatcher asks the queue (`ApprovalQueue.ask`), which lands here. The answer
rules and the request as stored live in `broker.approvals` (they need no kernel).

1. `create` writes a durable request (table `approvals`): an unguessable id, the process,
   tool, syscall, resource, the exact arguments and their hash, the reason the tool gave (the
   optional `reason` argument every checked syscall accepts), a deadline. It is audited
   (phase `ask`) and the process waits (state `waiting`, reason `approval <id>`).
2. A person answers through a front end: the Python API (`Kernel.approve/deny/answer`) or an
   auto-policy, in the broker (waking the waiter directly), or `libos approve ID` and the
   web page, which only write the answer into the pending row, signed by the user's key; the
   broker's watcher notices it, wakes that request's waiter, and applies it only if the
   signature holds (`approval_answers`: else the request is pending again, audited).
3. Applying an answer, exactly once (`applied` is set in the same transaction as the grants):
   * `once`: a one-shot capability (uses=1) bound to the hash of exactly the asked arguments,
     derived from the `ask` capability. The dispatcher re-checks the call, finds the grant and
     spends it atomically with the intent record; other arguments are `NotCapable`.
   * `always`: an `allow` capability for the resource (or a wider scope the person chose,
     never wider than the `ask` capability), audited as `admin`.
   Both are derivations like any other (`CapSpec.within` decides): a grant keeps the asking
   capability's expiry, and takes its uses from the asking capability's (`once` one, `always`
   all that are left), so no answer outlives or outnumbers the capability that asked.
   * `deny`: `ApprovalDenied`. `deny-always`: a `deny` capability, then `ApprovalDenied`.
   * no answer by the deadline: the request expires, `ApprovalDenied`.
   Its `ask`, `admin` (the answer) and `intent` records all carry the request id.
4. A request dies with its call: when the call is cancelled or its process ends (killed,
   exited), the request is settled as `cancelled` with its audit record in one transaction
   (for an ending process, the same transaction that records the end), and any answer to it
   is `Conflict`. An answer is never applied to a process that has ended. (A broker only
   closing, or killed, leaves the request pending: a planner's step that recovery runs again
   resumes waiting on it; the next broker cancels every other.)

Bounds: at most `max_pending` requests of a process pending (`PendingSlots`), a call beyond
waits for a slot (`LimitExceeded` at its deadline). Questions (`human.ask`) use the same table
(kind `question`) and front ends; an answer is JSON checked by their schema.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import trio

from broker.approvals import stored
from broker.approvals.rules import check_answer, check_names, derive_grant, storable
from broker.approvals.stored import bounded_who, encode_args, new_approval_id, public
from broker.caps import Capability, CapSpec, Decision, NeedsApproval
from broker.errors import ApprovalDenied, Cancelled, LibosError, LimitExceeded, NotFound
from broker.kernel.approval_answers import ApprovalAnswers
from broker.kernel.approval_slots import DEFAULT_MAX_PENDING, PendingSlots
from broker.kernel.faults import STORE_FAULTS, Streak, until_stored
from broker.kernel.front_ends import AutoPolicy as AutoPolicy  # (re-exported: its old home)
from broker.kernel.front_ends import FrontEnd, tell
from broker.kernel.step_record import step_invocations
from broker.lifecycle import LIVE
from broker.schema import compile_schema
from broker.store import AuditRecord, args_hash
from broker.store.json_column import read_json

if TYPE_CHECKING:
    from broker.kernel.invocation import Invocation
    from broker.kernel.ports import QueueNeeds
    from broker.kernel.process import AgentProcess

log = logging.getLogger("libos.approvals")

DEFAULT_TIMEOUT = 3600.0
POLL_SECONDS = 0.15
IDLE_SWEEP_TICKS = 20  # with nobody waiting, sweep every 3 s
MAX_REASON = 1000

ENDED = "its process has ended"
GONE = "cancelled: its row is gone (edited in the database) while its call waited"


class ApprovalQueue:
    def __init__(self, kernel: QueueNeeds, *, timeout: float = DEFAULT_TIMEOUT,
                 front_ends: Iterable[FrontEnd] = (),
                 max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.kernel = kernel
        self.store = kernel.store
        self.timeout = timeout
        self.front_ends = list(front_ends)
        self.slots = PendingSlots(kernel.clock, max_pending)
        self.answers = ApprovalAnswers(kernel)  # which answers it takes (`approval_answers`)
        # One event per request a call of this broker waits on: set by an answer, by the
        # watcher (an answer from another OS process, a deadline), or by the request's end.
        self._waiters: dict[str, trio.Event] = {}

    # -- requests ------------------------------------------------------------------------------

    def deadline(self, needed: NeedsApproval | None, timeout: float | None = None) -> float:
        """When a request asked now is denied unanswered: after the timeout, and never after
        the asking capability expires."""
        deadline = self.kernel.clock.now() + (self.timeout if timeout is None else timeout)
        expires = needed.cap.expires if needed else None
        return deadline if expires is None else min(deadline, expires)

    def create(self, proc: AgentProcess, inv: Invocation | None, syscall: str, args: Any, *,
               resource: str, deadline: float, needed: NeedsApproval | None = None,
               question: dict[str, Any] | None = None) -> dict[str, Any]:
        now = self.kernel.clock.now()
        reason = args.get("reason") if isinstance(args, dict) else None
        ahash = args_hash(args)
        cap_id = needed.cap.id if needed else None
        for old in self.store.pending_approvals_of(proc.pid, syscall, ahash):
            # The same call of the same process, asked before a restart and not answered
            # yet: it resumes waiting on that request (a person may already be looking at it).
            if (old["cap_id"] == cap_id and old["id"] not in self._waiters
                    and old["deadline"] > now and not self.answers.settled_before(old["id"])):
                self._waiters[old["id"]] = trio.Event()
                self.kernel.events.emit_durably(proc.pid, "approval", request=old["id"],
                                                type=old["kind"], syscall=syscall,
                                                resource=resource, resumed=True)
                return old
        row = {
            "id": new_approval_id(), "kind": "question" if question is not None else "capability",
            "pid": proc.pid, "inv": inv.id if inv else None, "tool": inv.tool if inv else None,
            "syscall": syscall, "resource": resource,
            "cap_kind": needed.kind if needed else None,
            "cap_right": needed.right if needed else None,
            "cap_id": cap_id,
            "cap_scope": needed.cap.scope if needed else None,
            "args": encode_args(args), "args_hash": ahash,
            "reason": str(reason)[:MAX_REASON] if reason is not None else None,
            "question": json.dumps(question, ensure_ascii=False) if question is not None
            else None,
            "created": now, "deadline": deadline, "state": "pending",
            "labels": json.dumps(sorted(needed.labels)) if needed and needed.labels else None,
        }
        self.store.insert_approval(row, AuditRecord(  # (one transaction: both or neither)
            phase="ask", syscall=syscall, pid=proc.pid, inv=row["inv"], tool=row["tool"],
            resource=resource, args_hash=ahash, cap_id=row["cap_id"],
            detail={"request": row["id"], "kind": row["kind"], "reason": row["reason"],
                    "deadline": row["deadline"],
                    # Labels a flow bound asks about: approving declassifies them, once.
                    **({"labels": sorted(needed.labels)} if needed and needed.labels else {})}))
        # (Durably: the request is filed, a person may see it; a store that refuses the
        # event must not make the call a Conflict, "nothing done", with nobody waiting.)
        self.kernel.events.emit_durably(proc.pid, "approval", request=row["id"],
                                        type=row["kind"], syscall=syscall, resource=resource)
        self._waiters[row["id"]] = trio.Event()
        request = public(self.store.get_approval(row["id"]))
        tell(self.front_ends, request, self)
        return row

    async def file(self, proc: AgentProcess, inv: Invocation | None, syscall: str, args: Any,
                   *, resource: str, needed: NeedsApproval | None = None,
                   question: dict[str, Any] | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        """File a request (once the process has a slot for it) and wait for it to be settled:
        answered, expired or cancelled. Returns the settled row; the caller applies it."""
        deadline = self.deadline(needed, timeout)
        try:
            await self.slots.acquire(proc.pid, deadline)
        except LimitExceeded as exc:
            self.store.append_audit(AuditRecord(
                phase="rejected", syscall=syscall, pid=proc.pid, inv=inv.id if inv else None,
                tool=inv.tool if inv else None, resource=resource, args_hash=args_hash(args),
                cap_id=needed.cap.id if needed else None,
                detail={"error": exc.code, "message": exc.message}))
            raise
        try:
            row = self.create(proc, inv, syscall, args, resource=resource, deadline=deadline,
                              needed=needed, question=question)
            return await self.wait(proc, row)
        finally:
            self.slots.release(proc.pid)

    async def wait(self, proc: AgentProcess, row: dict[str, Any]) -> dict[str, Any]:
        """Wait, woken and never polling, until the request is settled. The answered row is
        returned; the caller applies it."""
        approval_id = row["id"]
        try:
            async with self.kernel.waiting(proc, f"approval {approval_id}"):
                while True:
                    # A fresh event before each look: an answer after the look wakes it.
                    event = self._waiters[approval_id] = trio.Event()
                    try:
                        current = self.store.get_approval(approval_id)
                    except NotFound:  # (a writer renamed or deleted it: closed with its
                        # call on the chain, so a row put back is never answered: red team 39)
                        self.store.append_audit(stored.closing_record(row, "cancelled", GONE))
                        raise
                    if current["state"] != "pending" and self.answers.admit(current):
                        return current  # (one refused is pending again: waited on)
                    if self.kernel.clock.now() >= current["deadline"]:
                        self._expire([approval_id])
                        continue
                    await event.wait()
        except BaseException:
            with trio.CancelScope(shield=True):
                # The call is gone (cancelled, or its process ended): nobody will run it, so
                # the request dies with it. A broker that is only closing leaves it pending,
                # for the call to resume waiting on after a restart.
                if not self.kernel.closing:
                    self._settle("cancelled", "cancelled: its call was cancelled",
                                 ids=[approval_id], answered_too=True)
            raise
        finally:
            self._waiters.pop(approval_id, None)

    def _expire(self, ids: list[str]) -> None:
        self._settle("expired", "no answer by its deadline", ids=ids)

    def cancel(self, approval_id: str) -> bool:
        """Settle a pending request as cancelled, audited: the call that raised it is gone
        (a front end's session ended). False if it was settled already."""
        return bool(self._settle("cancelled", "cancelled: its call ended", ids=[approval_id]))

    def end_requests(self, ended: Sequence[tuple[int, dict[str, Any]]],
                     first: AuditRecord | None = None) -> None:
        """Processes ended (a tree killed): each end recorded (the row's new fields beside its
        pid; `first`, the act that ended them, before) and its unapplied requests cancelled."""
        why = {pid: f"cancelled: process {pid} {fields['state']}" for pid, fields in ended}
        self._settle("cancelled", why, answered_too=True, ended=ended, first=first)

    def _settle(self, state: str, why: str | Mapping[int, str], *,
                ids: list[str] | None = None, answered_too: bool = False,
                ended: Sequence[tuple[int, dict[str, Any]]] | None = None,
                first: AuditRecord | None = None) -> list[dict[str, Any]]:
        """Close requests without granting anything, each with its audit record (`why`: for
        all, or by process), and wake their waiters."""
        rows = self.store.settle_approvals(
            state, self.kernel.clock.now(), lambda row: stored.closing_record(
                row, state, why if isinstance(why, str) else why[row["pid"]]),
            ids=ids, answered_too=answered_too, ended=ended, first=first)
        for row in rows:  # (settled durably: an event that fails now waits for the flush)
            self.answers.settled(row["id"])
            self._wake(row["id"])
            self.kernel.events.emit_durably(row["pid"], "approval", request=row["id"],
                                            state=state)
        return rows

    def _wake(self, approval_id: str) -> bool:
        event = self._waiters.get(approval_id)
        if event is not None:
            try:
                trio.lowlevel.current_task()
            except RuntimeError:
                # A process ended from a wasm tool's worker thread (its budget ran out):
                # trio's events are set on trio's own thread.
                trio.from_thread.run_sync(event.set)
            else:
                event.set()
        return event is not None

    # -- answers -----------------------------------------------------------------------------

    def answer(self, approval_id: str, answer: str, *, scope: str | None = None,
               value: Any = None, who: str = "api", shown: str | None = None
               ) -> dict[str, Any]:
        """The in-process front end: validate, write (over the request as `shown`, if given),
        and wake the waiter (or, with nobody waiting here, apply it so a call finds it)."""
        now = self.kernel.clock.now()
        try:
            if not isinstance(approval_id, str):
                raise NotFound("no such approval request")
            check_names(approval_id, scope)
            row = self.store.get_approval(approval_id)
            stored.check_form(row["id"])  # (a writer's id: answered by nobody)
            self.answers.refuse_if_closed(approval_id)
            stored.check_answerable(row)  # (a row no surface shows: answered by nobody)
            state, scope, encoded = check_answer(row, answer, scope=scope, value=value, now=now,
                                                 alive=self._alive(row["pid"]))
            sig = self.store.answer_approval(approval_id, state=state, answer=answer,
                                             who=bounded_who(who), now=now, scope=scope,
                                             value=encoded,  # (the broker's key)
                                             shown=stored.shown_or_checked(row, shown))
            self.answers.given_here(approval_id, (state, answer, scope, encoded, sig))
        except LibosError as exc:
            self.answers.record_reject({"request": storable(str(approval_id)[:64]),
                                "answer": storable(str(answer)[:32]),
                                "who": bounded_who(who), "error": exc.code, "message": exc.message})
            raise
        if not self._wake(approval_id) and self.kernel.leasing.mine(row["pid"]):
            # (Else its broker's to apply.) A store that fails now: the answer is durable,
            # unapplied, and the sweep applies it once the store takes its record.
            with contextlib.suppress(*STORE_FAULTS):
                self.apply(self.store.get_approval(approval_id))
        return public(self.store.get_approval(approval_id))

    def _alive(self, pid: int) -> bool:
        # From the store: looking a process up here must not load it into the table.
        try:
            return self.store.get_process(pid)["state"] in LIVE
        except NotFound:
            return False

    def recover(self) -> None:
        """At opening: requests of processes that ended while their cancellation was cut off,
        and requests of calls the broker's end cut off, are cancelled (never granted), then
        the table and the audit are brought up to date."""
        orphans = self.store.orphaned_approvals()
        if orphans:
            self._settle("cancelled", "cancelled: its process had ended", ids=orphans,
                         answered_too=True)
        cut_off = self._cut_off()
        if cut_off:
            self._settle("cancelled", "cancelled: the broker stopped while its call waited",
                         ids=cut_off, answered_too=True)
        self.sweep()

    def _cut_off(self) -> list[str]:
        """Requests no call will take up again. No call of an earlier broker runs now: only a
        planner's step that recovery runs again (its checkpoint still holds it) may resume
        waiting on a request it filed. A host's call (an MCP client's), a step settled as
        `outcome unknown`, or any other is gone, and so is its request. (A denial written
        meanwhile is still applied: it only narrows.)"""
        rows = [*self.store.list_approvals("pending"),
                *(r for r in self.store.unapplied_answers() if r["state"] == "approved")]
        steps: dict[int, set[int]] = {}
        for row in rows:
            if row["pid"] not in steps:
                steps[row["pid"]] = step_invocations(self.store, row["pid"])
        return [row["id"] for row in rows if row["inv"] not in steps[row["pid"]]]

    def sweep(self) -> None:
        """Bring the table and the audit up to date: refusals logged by other OS processes,
        answers written by them (their waiters are woken; with none, they are applied), and
        requests past their deadline (expired, their waiters woken)."""
        self.store.take_approval_rejects(self.answers.record_reject)
        given = self.answers.given()  # (before the look: an answer given after it is kept)
        unapplied = self.store.unapplied_answers()
        for row in unapplied:
            if (self.kernel.leasing.mine(row["pid"]) and self.answers.admit(row)
                    and not self._wake(row["id"])):
                self.apply(row)
        self.answers.forget_settled(given, {row["id"] for row in unapplied})
        # Due requests expire on any broker (exactly once, under the write lock, told).
        self._expire(self.store.expired_approvals(self.kernel.clock.now()))
        if self._waiters:  # (settled by a peer, or the row gone: a writer's)
            for approval_id in self.store.settled_approvals(list(self._waiters)):
                self._wake(approval_id)

    async def watch(self) -> None:
        """Background task, the only one that polls: answers from other OS processes, and
        deadlines, while requests wait."""
        tick, streak = 0, Streak("the approval sweep")
        while True:
            await trio.sleep(POLL_SECONDS)
            tick += 1
            if self._waiters or tick % IDLE_SWEEP_TICKS == 0:
                try:
                    self.sweep()
                except STORE_FAULTS as exc:  # what it did not finish, the next tick does
                    streak.failed(exc)
                except Exception:
                    log.exception("approval sweep failed")
                else:
                    streak.worked()

    def apply(self, row: dict[str, Any]) -> str | None:
        """Audit an answer and grant what it grants, exactly once. Returns the granted
        capability's id (None for a plain deny, a question, or when nothing was granted)."""
        return self._apply(row)[0]

    def _apply(self, row: dict[str, Any]) -> tuple[str | None, str | None]:
        """`apply`, and why nothing was granted when an approval grants nothing."""
        if row["applied"] is not None:
            return row["grant_id"], None
        if not self._alive(row["pid"]):
            # Never a grant to a process that has ended: the request dies with it.
            self._settle("cancelled", f"cancelled: {ENDED}", ids=[row["id"]],
                         answered_too=True)
            return None, ENDED
        if not self.answers.admit(row):  # (changed since it was looked at: pending again)
            raise ApprovalDenied(f"the answer to {row['id']} was refused (see the audit)")
        answer = row["answer"]
        caps = self.kernel.caps
        # What the answer grants is minted here but held only once its record is durable
        # (check, audit, act): a store that fails meanwhile leaves nothing usable, and the
        # answer unapplied, to be applied again.
        entries: list[tuple[str, Capability]] = []
        carved: list[Capability] = []
        refused: str | None = None
        ask = self._asking_cap(row)
        if row["kind"] == "capability" and answer == "deny-always":
            # A deny rule narrows; it reaches the whole lineage below, as it would at a spawn.
            spec = CapSpec(row["cap_kind"], row["scope"], frozenset({row["cap_right"]}),
                           effect="deny")
            entries.append(caps.mint(row["pid"], spec, parent=ask.id if ask else None))
            entries += [caps.mint(child, spec, parent=entries[0][1].id)
                        for child in self.kernel.descendants(row["pid"])]
        elif row["kind"] == "capability" and answer in ("once", "always"):
            derived = derive_grant(row, ask, self.kernel.clock.now())
            if isinstance(derived, str):
                refused = derived
            else:
                assert ask is not None
                if ask.uses is not None and derived.uses:
                    carved.append(caps.carve(ask, derived.uses))
                entries.append(caps.mint(
                    row["pid"], derived, parent=ask.id,
                    args_hash=row["args_hash"] if answer == "once" else None))
        grant_id = entries[0][1].id if entries else None
        record = AuditRecord(  # (in the transaction that applies it: written once)
            phase="admin", syscall="approval.answer", pid=row["pid"], inv=row["inv"],
            tool=row["tool"], resource=row["resource"], args_hash=row["args_hash"],
            cap_id=grant_id,
            detail={"request": row["id"], "syscall": row["syscall"], "answer": row["answer"],
                    "who": row["who"], "scope": row["scope"], "grant": grant_id,
                    **({"grant_spec": entries[0][1].to_wire()} if entries else {}),
                    **({"effect": f"{refused}; nothing granted"} if refused else {})})
        self.store.apply_approval(row["id"], entries, grant_id, carved, record, answer=row)
        self.answers.applied(row["id"])
        for cap in carved:
            caps.restore(cap)  # the uses it handed over, gone from it now
        for handle, cap in entries:
            caps.load(cap, handle)
        self.kernel.events.emit_durably(row["pid"], "approval", request=row["id"],
                                        answer=row["answer"])  # (applied: durable already)
        return grant_id, refused

    async def _applied(self, row: dict[str, Any]) -> tuple[str | None, str | None]:
        """`_apply` for a waiting call: the answer is given, only its record waits for a store
        that fails; tried again until it is durable (or the call is cancelled)."""

        def attempt() -> tuple[str | None, str | None]:
            return self._apply(self.store.get_approval(row["id"]))  # (ended meanwhile?)

        return await until_stored(f"applying the answer to {row['id']}", attempt)

    def _asking_cap(self, row: dict[str, Any]) -> Capability | None:
        try:
            return self.kernel.caps.get(row["cap_id"]) if row["cap_id"] else None
        except NotFound:
            return None  # revoked meanwhile

    # -- the waiting call ---------------------------------------------------------------------

    async def ask(self, proc: AgentProcess, inv: Invocation | None, name: str, args: Any,
                  needed: NeedsApproval, authorize: Callable[[], Decision]) -> Decision:
        row = await self.file(proc, inv, name, args, resource=needed.resource, needed=needed)
        if row["state"] == "expired":
            raise ApprovalDenied(f"{name} on {needed.resource!r}: no answer by the deadline "
                                 f"(request {row['id']})")
        if row["state"] == "cancelled":
            raise Cancelled(f"approval request {row['id']} was cancelled")
        grant, refused = await self._applied(row)
        if refused == ENDED:
            raise Cancelled(f"approval request {row['id']} was cancelled: {ENDED}")
        if row["answer"] in ("deny", "deny-always") or grant is None:
            why = (f"answered {row['answer']!r}" if row["answer"] in ("deny", "deny-always")
                   else f"approved, but {refused}")
            exc = ApprovalDenied(f"{name} on {needed.resource!r}: {why} (request {row['id']})")
            self.store.append_audit(AuditRecord(
                phase="denied", syscall=name, pid=proc.pid, inv=inv.id if inv else None,
                tool=inv.tool if inv else None, resource=needed.resource,
                args_hash=row["args_hash"], cap_id=grant or needed.cap.id,
                detail={"request": row["id"], "error": exc.code, "message": exc.message}))
            raise exc
        try:
            decision = authorize()
        except NeedsApproval as again:  # another resource now, or labels it was not shown
            exc = ApprovalDenied(f"{name}: the approved call no longer matches what was asked")
            self.store.append_audit(AuditRecord(
                phase="denied", syscall=name, pid=proc.pid, inv=inv.id if inv else None,
                tool=inv.tool if inv else None, resource=needed.resource, cap_id=grant,
                args_hash=row["args_hash"], detail={"request": row["id"], "error": exc.code,
                "message": exc.message, "labels": sorted(again.labels)}))
            raise exc from None
        return Decision(decision.proof, decision.spends, approval=row["id"],
                        labels=decision.labels)

    async def question(self, proc: AgentProcess, inv: Invocation | None, args: dict[str, Any],
                       resource: str) -> Any:
        question = {"text": args["question"]}
        for key in ("schema", "choices"):
            if key in args:
                question[key] = args[key]
        if "schema" in question:
            compile_schema(question["schema"], "human.ask: answer schema")
        row = await self.file(proc, inv, "human.ask", args, resource=resource,
                              question=question, timeout=args.get("timeout"))
        if row["state"] == "cancelled":
            raise Cancelled(f"question {row['id']} was cancelled")
        if row["state"] == "expired":
            raise ApprovalDenied(f"no answer to question {row['id']} by its deadline")
        if (await self._applied(row))[1] == ENDED:
            raise Cancelled(f"question {row['id']} was cancelled: {ENDED}")
        if row["state"] == "denied":
            raise ApprovalDenied(f"question {row['id']} was declined")
        return read_json(row["value"], f"question {row['id']}'s answer", None)


