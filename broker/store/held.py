"""Held audit records: appended to the chain now (their seq and hash are fixed), committed by
the store's next transaction, whoever opens it.

A record may be held only when its loss in a crash acknowledges nothing: nothing may reach a
sandbox's effects, a person or the world on its strength until a later write has committed
it. Every write of the store commits what is held first, in the same transaction (`defer`),
and every read commits it before reading, so a held record is durable before any record,
row or answer that follows it. Its seq is fixed at once, so what it starts (a tool call's
invocation, whose id is its intent's seq) can name it before it is durable.

Where the chain's head is not this writer's alone (many brokers sharing one chain, or a task
that writes under a lease and its fence), nothing is held: the record is appended at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.store.audit import AuditRecord
from broker.store.chain import _INSERT_AUDIT, AuditChain
from broker.store.connection import Db


@dataclass(frozen=True, slots=True)
class _HeldRows:
    """A deferred write of chain rows made in advance; `head` is the chain's after them."""

    rows: tuple[tuple[Any, ...], ...]
    head: tuple[int, str]

    def __call__(self, db: Db) -> None:
        for row in self.rows:
            db.execute(_INSERT_AUDIT, row)


class HeldRecords(AuditChain):
    def close(self) -> None:
        try:
            if self._lock_fd is not None:
                self.commit_deferred()  # held records join the chain before its head is signed
        finally:
            super().close()

    def _holds(self) -> bool:
        return not self._shared and not self._fenced()

    def hold_audit(self, record: AuditRecord, *, payload: bytes | None = None) -> int:
        """`append_audit`, committed by the next transaction (see the module docstring).
        Returns the record's seq."""
        self._require_writer()
        with self._lock:
            if not self._holds():
                return self.append_audit(record, payload=payload)
            row, head = self._chain_row(record, self._held_head or self._head, payload)
            self._hold(_HeldRows((row,), head))
            return head[0]

    def hold_pair(self, intent: AuditRecord, outcome: AuditRecord,
                  payload: bytes | None = None) -> int:
        """`append_pair`, committed by the next transaction (see the module docstring).
        Returns the intent's seq."""
        self._require_writer()
        with self._lock:
            if not self._holds():
                return self.append_pair(intent, outcome, payload)
            head = self._held_head or self._head
            seq = head[0] + 1
            outcome.detail["intent"] = seq
            intent_row, head = self._chain_row(intent, head, None)
            outcome_row, head = self._chain_row(outcome, head, payload)
            self._hold(_HeldRows((intent_row, outcome_row), head))
            return seq

    def _hold(self, held: _HeldRows) -> None:
        self._held_head = held.head
        self.defer(held)

    def _after_commit(self, written: list[Callable[[Db], Any]]) -> None:
        """Held rows were committed with `written`: the chain's head moves past them (and the
        anchor's with it); none left waiting, nothing is held any more."""
        heads = [w.head for w in written if isinstance(w, _HeldRows)]
        if not heads:
            return
        if not any(isinstance(w, _HeldRows) for w in self._deferred or ()):
            self._held_head = None
        if not self._in_append:  # (an append moves it past its own record next)
            self._move_head(heads[-1])
