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
record is not even chained (`broker.kernel.held_call.HeldCall`) until something needs its
seq, the invocation's id: the first record made inside the call (a sandboxed tool's syscall,
a denial, a nested call, a log line) chains it first, as an intent, deferred to the commit
of that record, so it is durable before the effect. A builtin's read is answered inside the
broker, so its whole record waits in the `HeldCall` too. A call that ends with its record
still held had no effect of its own: it is written as ONE record, phase `intent+outcome`
(its arguments' payload and its result's, one after the other, `broker.store.vouch`),
followed by the reads that waited (their `inv` its seq), in one commit before its answer
leaves the broker (`append_call`). A crash before any of these leaves no record of a call
that did nothing, as if it had not begun, and recovery runs a step cut off that way again. A
call that spends a one-shot use or was approved by a person keeps its intent first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.caps import Decision
from broker.store.audit import AuditRecord, merged
from broker.syscalls import TABLE, SyscallDef

if TYPE_CHECKING:
    from broker.kernel.invocation import Invocation


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
