"""Budgets: what an image lets a process spend (steps, tool calls, syscalls), counted against
the process and every ancestor, so a child's spending counts against its parents."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.errors import LimitExceeded

if TYPE_CHECKING:
    from broker.kernel.ports import ProcessTable
    from broker.kernel.process import AgentProcess


class Budgets:
    def __init__(self, table: ProcessTable) -> None:
        self.table = table

    def charge(self, proc: AgentProcess, what: str,
               first: Callable[[], object] | None = None) -> None:
        """Spend one unit of `what` for the process and every ancestor: a child's spending
        counts against its parents. When a budget runs out, the process that owned it (and
        its descendants) is killed, and the spending call fails with `LimitExceeded`.
        `first`: run before that kill (a held `tool.call` record chained: the call that
        spent the budget is in the audit before the kill it caused is durable)."""
        current: AgentProcess | None = proc
        while current is not None:
            spent = getattr(current.usage, what) + 1
            setattr(current.usage, what, spent)
            limit = getattr(current.image.budget, what)
            if limit is not None and spent > limit:
                if first is not None:
                    first()
                self.table.terminate(current.pid, f"LimitExceeded: {what} budget ({limit}) spent")
                owner = "" if current is proc else f" of ancestor {current.pid}"
                raise LimitExceeded(f"{what} budget{owner} ({limit}) spent")
            current = self.table.loaded(current.parent) if current.parent else None
