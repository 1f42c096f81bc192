"""Which answers to approval requests a broker applies: one given in this broker (the
in-process API, `Kernel.approve/deny/answer`, a front end's callback: the embedder's own), or
one written through the store (`libos approve`, `libos web`: a row anyone who writes the
database may write) only if signed by a key the broker trusts, for this store and this very
request (`broker.store.answer_sig`), and not applied before. The check of a person's
authority for this channel, before the queue applies the answer.

Once: an answer applied is an `approval.answer` record (`admin`) on the chain; the requests
answered are read from there, where a database writer cannot take them away without breaking
the chain (`libos audit --verify`), never from the `applied` column: a row set back to
pending and its old signed answer written in again is refused. So is any answer to a request
the chain records cancelled (its call gone) or expired (no answer by its deadline), whatever
its row says since (`broker.approvals.closed`): it is closed again so, never resumed.

An answer refused is not applied: the request is pending again (its deadline unchanged, for a
person to answer), and a `rejected` record (`approval.answer`, `via: store`) says why.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any

from broker.approvals.closed import ClosedOnChain
from broker.approvals.stored import check_not_closed
from broker.errors import Conflict, LibosError, NotCapable
from broker.kernel.control_requests import signed_for
from broker.kernel.faults import STORE_FAULTS
from broker.store import AuditRecord, answer_sig, control_sig
from broker.store.audit import storable_pid

if TYPE_CHECKING:
    from broker.kernel.ports import HasStore

_ANSWER = ("state", "answer", "scope", "value", "sig")
_WHY = {"cancelled": "its call gone", "expired": "no answer by its deadline"}


class ApprovalAnswers:
    def __init__(self, kernel: HasStore) -> None:
        self.kernel = kernel
        self._here: dict[str, tuple[Any, ...]] = {}  # answers given in this broker, by request
        self._read = 0  # the chain's seq up to which its answer records were read
        self._applied: set[str] = set()  # the requests whose answer the chain records applied
        self._applied_at: dict[str, list[int]] = {}  # ...and the seqs of those records
        self._applied_here: set[str] = set()  # the requests this broker applied an answer to
        self.closed = ClosedOnChain()  # the requests the chain records cancelled, expired

    def given_here(self, approval_id: str, answer: tuple[Any, ...]) -> None:
        """An answer this broker wrote itself (its fields `_ANSWER`, as written): applied
        as long as its signature holds over the row (none: no key signed it), so a writer's
        edit of the request between the answer and its applying is not applied with it."""
        self._here[approval_id] = answer

    def given(self) -> dict[str, tuple[Any, ...]]:
        """The answers given here still remembered (a copy: `forget_settled`'s before)."""
        return dict(self._here)

    def forget_settled(self, before: dict[str, tuple[Any, ...]], waiting: set[str]) -> None:
        """Forget the answers given here (`before`, taken before the store was read) that no
        longer wait to be applied (`waiting`: the store's unapplied answers): applied by a
        peer (brokers sharing the store), cancelled, refused. Else they stayed for the
        broker's life, one per request answered here that another broker applied. One given
        again since is kept."""
        for approval_id, answer in before.items():
            if approval_id not in waiting and self._here.get(approval_id) is answer:
                del self._here[approval_id]

    def settled(self, approval_id: str) -> None:
        """The request was closed unanswered (cancelled, expired): an answer given here to it
        is never applied."""
        self._here.pop(approval_id, None)

    def admit(self, row: dict[str, Any]) -> bool:
        """Whether the answer in `row` (as read) is to be applied; if not, the request is made
        pending again with a record of why (False). A row not answered is not this check's;
        one marked applied is taken only if the chain records it so (else a writer's mark
        would hand its value to a waiting question)."""
        if row["state"] not in ("approved", "denied"):
            return True
        closed = self.closed_before(row["id"])
        if closed is not None:
            self._refuse(row, control_sig.parse(row.get("sig")), Conflict(
                f"the request was {closed} ({_WHY[closed]}): no answer to it is applied"),
                closed=closed)
            return False
        if row["applied"] is not None:
            if self._applied_by_a_broker(row["id"]):
                return True
            self._refuse(row, control_sig.parse(row.get("sig")), NotCapable(
                "the request is marked applied, but the chain records no answer applied to it"))
            return False
        signed = control_sig.parse(row.get("sig"))
        if self._given_here_as_is(row, signed):
            return True
        try:
            self._check(row, signed)
        except LibosError as exc:
            self._refuse(row, signed, exc)
            return False
        return True

    def _given_here_as_is(self, row: dict[str, Any], signed: control_sig.Signed | None) -> bool:
        """The answer this broker wrote, over the request as it was then (its signature
        holds; none if the broker has no key)."""
        if self._here.get(row["id"]) != tuple(row[k] for k in _ANSWER):
            return False
        return row["sig"] is None or (
            signed is not None and answer_sig.holds(signed, self.kernel.store.identity, row))

    def settled_before(self, approval_id: str) -> bool:
        """Whether the chain records the request answered (an answer applied), cancelled or
        expired: one a writer set back to pending is never waited on again (its later mark
        `applied` would pass as that answer, handing the writer's value to the call)."""
        return (self._answered_before(approval_id)
                or self.closed_before(approval_id) is not None)

    def _answered_before(self, approval_id: str) -> bool:
        self._catch_up()
        return approval_id in self._applied

    def closed_before(self, approval_id: str) -> str | None:
        """`cancelled` or `expired` if the chain records the request closed so."""
        return self.closed.state_of(self.kernel.store, approval_id)

    def refuse_if_closed(self, approval_id: str) -> None:
        """`Conflict` for an answer given here to a request the chain records closed."""
        check_not_closed(self.kernel.store, self.closed, approval_id)

    def _applied_by_a_broker(self, approval_id: str) -> bool:
        """Whether a broker applied an answer to the request: this one, or (brokers sharing the
        store) a peer whose signed record of it the chain vouches for. A record naming it is
        not enough: a writer inserts one of its own beside its mark `applied` (its hash is
        unkeyed; a single writer's store has no peer to have applied it)."""
        if approval_id in self._applied_here:
            return True
        store = self.kernel.store
        links = store.chain_links()
        if links.signatures is None or not self._answered_before(approval_id):
            return False
        links.walk()
        for seq in self._applied_at.get(approval_id, ()):
            stored = next(iter(store.audit_records(after=seq - 1)), None)
            if stored is not None and stored.seq == seq and links.vouches(stored):
                return True
        return False

    def record_reject(self, detail: dict[str, Any]) -> None:
        """A refused answer's record (given here, or logged by a front end elsewhere)."""
        self.kernel.store.append_audit(AuditRecord(
            phase="rejected", syscall="approval.answer", resource=detail.get("request"),
            detail=detail))

    def applied(self, approval_id: str) -> None:
        self._here.pop(approval_id, None)
        self._applied.add(approval_id)
        self._applied_here.add(approval_id)

    def _check(self, row: dict[str, Any], signed: control_sig.Signed | None) -> None:
        store = self.kernel.store
        signed = signed_for(store, signed, "answer")
        if not answer_sig.holds(signed, store.identity, row):
            raise NotCapable("the answer's signature does not hold: altered since it was"
                             " signed, or given to another request")
        if not row["answered"] < row["deadline"]:
            raise Conflict("the answer was given after the request's deadline")
        self._catch_up()
        if row["id"] in self._applied:
            raise Conflict("the request was answered before: an answer is applied once")

    def _catch_up(self) -> None:
        linked = self.kernel.store.linked_seq  # (the mark stays on the chain: `linked_seq`)
        for seq, phase, detail in self.kernel.store.answer_records(self._read):
            self._read = max(self._read, min(seq, linked))
            request = detail.get("request") if isinstance(detail, dict) else None
            if phase == "admin" and isinstance(request, str):
                self._applied.add(request)
                at = self._applied_at.setdefault(request, [])
                if seq not in at:  # (a record past `linked_seq` is read again)
                    at.append(seq)

    def _refuse(self, row: dict[str, Any], signed: control_sig.Signed | None,
                exc: LibosError, *, closed: str | None = None) -> None:
        detail = {"request": row["id"], "answer": str(row["answer"])[:32], "via": "store",
                  "who": str(row["who"])[:128], "error": exc.code, "message": exc.message,
                  **({"key": signed.key} if signed is not None else {})}
        record = AuditRecord(phase="rejected", syscall="approval.answer",
                             pid=storable_pid(row["pid"]),
                             resource=row["id"], detail=detail)
        with suppress(*STORE_FAULTS):  # (refused, recorded or not: the next look tries again)
            self.kernel.store.refuse_answer(row, record, closed=closed)
