"""Live descendants: how many processes are alive below each process (its children, theirs,
and so on), counted against every ancestor like a budget, and bounded by
`ProcessLimits.descendants`. A `proc.spawn` past the bound of the spawner or of any ancestor
is refused with `LimitExceeded` in its check; so one tool call can no longer leave 10,000
live children behind (each kept in the broker's memory), nor a tree of children spawning
children more than the bound in all. The host, the root of authority, is not bounded.

The counts live in memory: a spawn (or a fork) adds the new process to each ancestor's count,
its end takes it off, and a broker that opens a store counts its live processes again as
recovery loads them (parents before children). Like budgets, ancestors are walked in the
process table; a live process loaded again brings its ended ancestors back into it
(`recovery._ancestors_loaded`), so a grandchild whose parent ended before a restart still
counts below its grandparent (red team rskern).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from broker.errors import LimitExceeded

if TYPE_CHECKING:
    from broker.kernel.ports import ProcessTable
    from broker.kernel.process import AgentProcess


class LiveDescendants:
    def __init__(self, table: ProcessTable, limit: int) -> None:
        self.table = table
        self.limit = limit
        self._below: Counter[int] = Counter()

    def below(self, pid: int) -> int:
        """Live processes below `pid`."""
        return self._below[pid]

    def check(self, spawner: AgentProcess) -> None:
        """`LimitExceeded` if one more child of `spawner` would pass the bound of the spawner
        or of an ancestor."""
        for proc in (spawner, *self._ancestors(spawner)):
            if self._below[proc.pid] >= self.limit:
                whose = "" if proc is spawner else f" (its ancestor {proc.pid})"
                raise LimitExceeded(f"process {proc.pid}{whose} already has {self.limit} live "
                                    "descendants")

    def born(self, proc: AgentProcess) -> None:
        """A live process below its ancestors (spawned, forked, or loaded again)."""
        for ancestor in self._ancestors(proc):
            self._below[ancestor.pid] += 1

    def ended(self, proc: AgentProcess) -> None:
        for ancestor in self._ancestors(proc):
            if self._below[ancestor.pid] <= 1:
                del self._below[ancestor.pid]
            else:
                self._below[ancestor.pid] -= 1

    def _ancestors(self, proc: AgentProcess) -> Iterator[AgentProcess]:
        current = self.table.loaded(proc.parent) if proc.parent is not None else None
        while current is not None:
            yield current
            current = self.table.loaded(current.parent) if current.parent is not None else None
