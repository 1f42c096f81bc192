"""Group commit: one commit carries the writes of many processes.

Two kinds of deferred write (`Connected.defer`) wait here:

* **Checkpoints.** The checkpoint after a step (its observation with it) is committed by the
  next write of any process, usually the next step's own checkpoint and `tool.call` intent, or
  another process's record. So that a planner that thinks for a long time (a model) does not
  leave it waiting, `run` commits whatever is still deferred `WINDOW` seconds after a step
  asked (`soon`). Its loss in a crash inside that window acknowledges nothing: the step's
  `tool.call` outcome is durable before the step ends, and recovery hands the step that
  outcome (as it does after a crash between the outcome and the checkpoint).
* **Audit records of concurrent processes** (`durable`). While several processes run, a
  record the dispatcher writes on a process's trio task is deferred, and the task waits in
  `durable` before the effect it announces, or before the answer it records leaves the
  broker. The first task to wait lets every other task run until it waits too (for at most
  `GATHER`), then commits all their records in one transaction; the others wake to find
  theirs committed. Nothing reaches a sandbox, a person or the world before its record is durable,
  exactly as with a commit per record: only the number of commits changes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from broker.store.interface import Store

log = logging.getLogger("libos.kernel")

WINDOW = 0.005  # seconds
GATHER = 0.002  # seconds a group commit waits, at most, for other tasks to join it

try:  # trio's own "until every other task waits"; `trio.testing` would import pytest
    from trio._core import wait_all_tasks_blocked as _all_tasks_waiting
except ImportError:  # pragma: no cover (another trio): the tasks runnable now join
    _all_tasks_waiting = trio.lowlevel.checkpoint


class GroupCommit:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._asked = trio.Event()
        self._committing: trio.Event | None = None  # set when the pending group commit ends
        self.active = 0  # processes the scheduler drives: with more than one, records are grouped

    @property
    def grouping(self) -> bool:
        """Records may wait for a group commit: other processes run under planners too (with
        one, a commit of its own costs the same and waits for nobody)."""
        return self.active > 1

    def soon(self) -> None:
        """A write was deferred: commit it within `WINDOW` if nothing else does."""
        self._asked.set()

    async def durable(self) -> None:
        """Return once every write deferred so far (this task's records among them) is
        committed: by the group commit this task leads or joins, or by any other
        transaction in between."""
        store = self.store
        target = store.deferred_total
        if store.committed_total >= target:
            return
        if self._committing is not None:  # another task leads the commit: join it
            await self._committing.wait()
        else:
            self._committing = done = trio.Event()
            try:
                # Every other task runs until it waits (most for this commit): their records
                # go in it too. Bounded, for a task that never waits. If this task is
                # cancelled meanwhile, those waiting commit for themselves (below).
                with trio.move_on_after(GATHER):
                    await _all_tasks_waiting()
                store.commit_deferred()
            finally:
                self._committing = None
                done.set()
        if store.committed_total < target:  # the leader's commit failed: fail here
            store.commit_deferred()

    async def run(self) -> None:
        while True:
            await self._asked.wait()
            await trio.sleep(WINDOW)
            self._asked = trio.Event()
            self.store.commit_deferred()
