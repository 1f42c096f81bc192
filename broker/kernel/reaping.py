"""Ended processes leave the broker's memory: a long-running kernel that spawns and ends many
processes keeps a table of about the size of what runs, not of everything it ever ran.

An ended process's record stays in the store (its state, exit code, result as stored,
checkpoints, audit), and `Kernel.process` loads it back from there when asked, as it does
after a restart. Its object leaves the table once it is of no more use there:

- it has ended and its task has unwound (`done` is set: a `wait` begun before has its answer);
- nothing below it is alive: the live-descendant counts and budgets of a live process are
  walked up through its ancestors in the table (`lineage`, `budgets`), ended ones too;
- the store gives its result back whole: the store keeps a result summarized (a bounded
  picture, `summarize`), and a `wait` for a process (the host's, a parent's `proc.wait`)
  must not answer with a summary because other processes ended meanwhile. A process whose
  result is bigger than its summary stays (as every process did before they were reaped);
- it is not among the newest `KEEP_ENDED` ended ones: a host that asks about a process just
  after it ended gets the object it ran as.

The table is swept when it reaches twice its size after the last sweep (`FIRST_SWEEP` at
least): amortised, a spawn pays O(1) for it.

What else the broker keeps per process goes with it (`Kernel.left`): its capabilities, but
those a revocation must still reach through (`CapabilityRegistry.release`), and the planner
factory given for its descendants (`Spawner.release`: nothing below it lives).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from broker.kernel.summary import summarize

if TYPE_CHECKING:
    from broker.kernel.process import AgentProcess

KEEP_ENDED = 256  # the newest ended processes kept in memory
FIRST_SWEEP = 1024  # the first sweep comes when the table holds this many processes


def sweep(procs: dict[int, AgentProcess], live_below: Callable[[int], int],
          left: Callable[[list[int]], None], admitted: int) -> int:
    """Drop from `procs` the ended processes it no longer needs (see the module), then tell
    `left` which went (what else the broker keeps per process goes with them); returns the
    size at which the next sweep is due. The process just `admitted` stays, and so does the
    parent of a live one: one loaded back to be forked from, and then its new child (not yet
    counted below it, its capabilities not yet derived), are in use."""
    in_use = {admitted, *(proc.parent for proc in procs.values() if proc.alive)}
    ended = sorted(pid for pid, proc in procs.items()
                   if not proc.alive and proc.done.is_set() and not live_below(pid)
                   and pid not in in_use and summarize(proc.result) == proc.result)
    gone = ended[:-KEEP_ENDED] if KEEP_ENDED else ended
    for pid in gone:
        del procs[pid]
    left(gone)
    return max(FIRST_SWEEP, 2 * len(procs))
