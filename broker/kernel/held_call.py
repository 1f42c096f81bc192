"""A `tool.call` record held in memory until something in the call needs its seq, or
written whole with its outcome when nothing did (`broker.kernel.read_commit` tells why)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from broker.store.audit import AuditRecord, merged

if TYPE_CHECKING:
    from broker.store.interface import Store


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
