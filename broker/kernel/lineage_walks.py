"""Questions of lineage: a process's parent and children, who is below whom. A mixin of
`Kernel`. They read the process table, or the store's rows for a process not in it: an ended
process is not loaded back whole for them (`reaping`), so a walk up or down a tree of
thousands of ended processes (which any process's `proc.signal` asks for before its
capability check) costs a row each, not a load each on the broker's thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.errors import Conflict, NotFound

if TYPE_CHECKING:
    from broker.kernel.process import AgentProcess
    from broker.store import SQLiteStore


class LineageWalks:
    store: SQLiteStore
    _procs: dict[int, AgentProcess]

    if TYPE_CHECKING:  # the kernel proper's
        def process(self, pid: int) -> AgentProcess: ...

    def parent_of(self, pid: int) -> int | None:
        """`pid`'s parent (`NotFound` for no such process)."""
        if type(pid) is not int:  # (not a bool, nor 1.0: the table's keys would take them)
            raise NotFound(f"no process {pid!r}")
        proc = self._procs.get(pid)
        if proc is not None:
            return proc.parent
        parent = self.store.parent_of(pid)
        if parent is not None and parent >= pid:  # (a parent is older: rows anyone may write)
            raise Conflict(f"process {pid}'s lineage loops at {parent} in the store")
        return parent

    def children_of(self, pid: int) -> list[int]:
        proc = self._procs.get(pid)
        if proc is not None:
            return list(proc.children)
        return [c for c in self.store.children_of(pid) if c > pid]  # (as `parent_of`)

    def descendants(self, pid: int, *, loaded: bool = True) -> list[int]:
        """Every process below `pid` in the lineage (children first). `loaded` False: `pid`
        is not loaded (it cannot be: held for an unsigned end), its children read from the
        store as `children_of` reads them."""
        found: list[int] = []
        pending = list(self.process(pid).children) if loaded else self.children_of(pid)
        while pending:
            child = pending.pop(0)
            found.append(child)
            pending.extend(self.children_of(child))
        return found

    def is_descendant(self, ancestor: int, pid: int) -> bool:
        current = self.parent_of(pid)
        while current is not None:
            if current == ancestor:
                return True
            current = self.parent_of(current)
        return False
