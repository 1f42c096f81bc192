"""A `tool.call` record held in memory until something in the call needs its seq, or
written whole with its outcome when nothing did (`broker.kernel.read_commit` tells why)."""

from __future__ import annotations

import threading
from operator import ne
from typing import TYPE_CHECKING, Any

from broker.store.audit import RESULT_KEYS, WHOLE, WRAPS, AuditRecord, merged

if TYPE_CHECKING:
    from broker.store.interface import Store


_CHAINING = threading.Lock()  # one call chained once, whichever thread asks first
# What a builtin's read record may hold to be folded: its arguments (the call's), the labels,
# and how it ended (the call's own); `_fold` carries the labels, the rest the call says.
_FOLDABLE = frozenset({"args", "args_labels", "labels", *RESULT_KEYS})


def chain_held_calls(proc: Any) -> None:
    """Chain the process's top-level calls whose records are held, in the order they began
    (before another top-level call's record, or a step's checkpoint: recovery takes the
    first top-level `tool.call` after a pending step's checkpoint for the step's own, and a
    host's is marked so only from this version on, `HOST_CALL`: so a host's call made beside
    a step must never be chained before it, nor one begun before the checkpoint after it)."""
    calls = proc.held_calls
    while calls:
        calls[0].chained()
        del calls[0]


class HeldCall:
    """A `tool.call` whose record is not chained yet (see the module's docstring): its intent
    record and arguments' payload, and the whole records of the builtin reads made in it."""

    __slots__ = ("payload", "reads", "record", "seq", "store", "wraps")

    def __init__(self, record: AuditRecord, payload: bytes | None, store: Store) -> None:
        store.check_storable(record)  # (refused before the call runs, as its intent was)
        self.record = record
        self.payload = payload
        self.store = store
        self.seq: int | None = None  # chained: its seq (the invocation's id)
        self.reads: list[tuple[AuditRecord, bytes | None]] = []
        # A builtin that is exactly one syscall (`ToolPlan.wraps`): a read it made, held to
        # the end, is folded into the call's own record (`whole`).
        self.wraps = False

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
        record = merged(self.record, outcome)
        if self.wraps and len(reads) == 1 and _fold(record, reads[0][0]):
            reads = []  # (its payload is the call's result: the same bytes)
        self.seq = self.store.append_call(record, payload, reads, defer=defer)
        return self.seq


def _fold(call: AuditRecord, read: AuditRecord) -> bool:
    """Fold the one read of a builtin wrapper into the call's whole record (`audit.WRAPS`),
    when the call's record says all the read's did but who read what: the same end (its
    result and the result's hash, or its error), as the wrapper hands its syscall's answer on
    untouched. The read's arguments are the call's (the wrapper's schema is its syscall's)."""
    said, told = read.detail, call.detail
    # (Compared in C, key by key, as far as the first that differs: a generator's frame per
    # key cost more than the rest of the fold, on every builtin call.)
    if read.phase != WHOLE or any(map(ne, map(said.get, RESULT_KEYS), map(told.get, RESULT_KEYS))):
        return False
    # Nothing else of the read's own record may be lost: a key the fold does not carry (a
    # listing's `unnamed`, the names it left out), or arguments other than the call's.
    if not said.keys() <= _FOLDABLE or said.get("args") != _call_args(told):
        return False
    folded = {"syscall": read.syscall, "resource": read.resource, "cap_id": read.cap_id,
              "args_hash": read.args_hash}
    for key in ("args_labels", "labels"):  # (the data it carried, the data it returned)
        if key in said:
            folded[key] = said[key]
    told[WRAPS] = folded
    return True


def _call_args(detail: dict[str, Any]) -> Any:
    call = detail.get("args")
    return call.get("args", {}) if isinstance(call, dict) else None
