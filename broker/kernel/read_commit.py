"""One commit per read: which syscalls write their intent together with their outcome.

A syscall that changes nothing and reaches nothing outside the broker (a read of a file, an
object, the clock, the process table) has no effect a crash could leave half-done, so its
intent need not be durable before it runs: the intent and the outcome are written in one
transaction after the read, before the answer leaves the broker. A crash before that commit
leaves neither record and shows nobody anything, which is what a crash before the call would
have left. What waits (a receive, an event wait), spends a one-shot use, was put to a person
or is a host tool (the embedder's code, which may reach the world) keeps its intent first.
"""

from __future__ import annotations

from broker.caps import Decision
from broker.syscalls import TABLE, SyscallDef


def held_until_outcome(spec: SyscallDef, decision: Decision | None) -> bool:
    """The intent of this call may wait for its outcome (see the module's docstring)."""
    return (spec.idempotent and not spec.blocking and TABLE.get(spec.name) is spec
            and not (decision is not None and (decision.spends or decision.approval)))
