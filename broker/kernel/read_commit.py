"""What a call's records wait for before they are committed: one commit per read, a lazy
`tool.call` intent, and a builtin tool's reads committed with the tool's outcome.

A syscall that changes nothing and reaches nothing outside the broker (a read of a file, an
object, the clock, the process table) has no effect a crash could leave half-done, so its
intent need not be durable before it runs: the intent and the outcome are written together
after the read, before the answer leaves the broker, as ONE record (phase `intent+outcome`,
`whole_record`): one row, one hash, one JSON detail, where a record of each was two. A
crash before that commit leaves no record and shows nobody anything, which is what a crash
before the call would have left. What waits (a receive, an event wait), spends a one-shot
use, was put to a person or is a host tool (the embedder's code, which may reach the world)
keeps its intent first.

When the read was made by a builtin tool (broker code: `broker.kernel.builtin_tools`), its
answer does not leave the broker until the tool's own outcome is recorded, so the read's
record is deferred (`append_audit(defer=True)`: chained now, inserted by the store's next
transaction, `AuditChain._defer_rows`) and committed with that outcome: one commit for the
whole call.

A `tool.call` intent is held too (a lazy intent): a tool's arguments reach only its sandbox,
which belongs to the calling process's authority and can do nothing but make syscalls. Its
record is not even chained (`HeldCall`) until something needs its seq, the invocation's id:
the first record made inside the call (a sandboxed tool's syscall, a denial, a nested call,
a log line) chains it first, as an intent, deferred to the commit of that record, so it is
durable before the effect. A builtin's read is answered inside the broker, so its whole
record waits in the `HeldCall` too. A call that ends with its record still held had no
effect of its own: it is written as ONE record, phase `intent+outcome` (its arguments'
payload and its result's, one after the other, `broker.store.vouch`), followed by the reads
that waited (their `inv` its seq), in one commit before its answer leaves the broker
(`append_call`). A crash before any of these leaves no record of a call that did nothing, as
if it had not begun, and recovery runs a step cut off that way again. A call that spends a
one-shot use or was approved by a person keeps its intent first.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from broker.caps import Decision
from broker.store.audit import AuditRecord, merged
from broker.syscalls import TABLE, SyscallDef

if TYPE_CHECKING:
    from broker.kernel.invocation import Invocation
    from broker.store.interface import Store


def held_until_outcome(spec: SyscallDef, decision: Decision | None) -> bool:
    """The intent of this call may wait for its outcome (see the module's docstring)."""
    return (spec.idempotent and not spec.blocking and TABLE.get(spec.name) is spec
            and not (decision is not None and (decision.spends or decision.approval)))


def lazy_intent(spec: SyscallDef, decision: Decision | None) -> bool:
    """A `tool.call` whose intent waits for the tool's first effect or its outcome."""
    return (spec.name == "tool.call" and TABLE.get(spec.name) is spec
            and not (decision is not None and (decision.spends or decision.approval)))


def answered_in_broker(inv: Invocation | None) -> bool:
    """A call made by a builtin tool: its answer stays in the broker until the tool's outcome
    is recorded."""
    return inv is not None and inv.in_broker


def whole_record(intent: AuditRecord, outcome: dict[str, Any]) -> AuditRecord:
    """The held `intent` and its outcome's detail as one record (phase `intent+outcome`,
    `broker.store.audit.merged`; the held record is the caller's alone: changed in place)."""
    return merged(intent, outcome)


_CHAINING = threading.Lock()  # one call chained once, whichever thread asks first


def chain_held_calls(proc: Any) -> None:
    """Chain the process's top-level calls whose records are held, in the order they began
    (before another top-level call's record, or a step's checkpoint: recovery takes the
    first top-level `tool.call` after a pending step's checkpoint for the step's own, so a
    host's call made beside a step must never be chained before it, nor one begun before the
    checkpoint after it)."""
    calls = proc.held_calls
    while calls:
        calls[0].chained()
        del calls[0]


class HeldCall:
    """A `tool.call` whose record is not chained yet (see the module's docstring): its intent
    record and arguments' payload, and the whole records of the builtin reads made in it."""

    __slots__ = ("payload", "reads", "record", "seq", "store")

    def __init__(self, record: AuditRecord, payload: bytes | None, store: Store) -> None:
        store.check_storable(record)  # (refused before the call runs, as its intent was)
        self.record = record
        self.payload = payload
        self.store = store
        self.seq: int | None = None  # chained: its seq (the invocation's id)
        self.reads: list[tuple[AuditRecord, bytes | None]] = []

    def chained(self) -> int:
        """Its seq: chained now as an intent if it was not (deferred, with the reads it held,
        to the commit of the record that asked: durable before the effect that record is
        for)."""
        seq = self.seq
        if seq is None:
            # (A wasm tool's first syscall asks on its worker thread while the trio thread
            # may chain the same call: a host's call beside its step, `chain_held_calls`.)
            with _CHAINING:
                seq = self.seq
                if seq is None:
                    reads, self.reads = self.reads, []
                    seq = self.seq = self.store.append_call(self.record, self.payload, reads,
                                                            defer=True)
        return seq

    def hold(self, record: AuditRecord, payload: bytes | None) -> bool:
        """Keep a builtin read's whole record for the call's own record to go first; False
        once the call is chained (the read is written as any other)."""
        if self.seq is not None:
            return False
        self.store.check_storable(record)  # (refused now, as a read written now would be)
        self.reads.append((record, payload))
        return True

    def whole(self, outcome: dict[str, Any], payload: bytes | None, defer: bool) -> int:
        """The call ended with its record held (no effect of its own): one record, phase
        `intent+outcome`, then the reads it held; all durable in one commit unless `defer`
        (a group commit the caller waits for). Its seq."""
        args = self.payload
        if args is not None and payload is not None:
            payload = args + payload  # its arguments, then its result (`vouch.payload_parts`)
        elif args is not None:
            payload = args
        reads, self.reads = self.reads, []
        self.seq = self.store.append_call(merged(self.record, outcome), payload, reads,
                                          defer=defer)
        return self.seq
