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
  broker. The first task to wait lets every other runnable task run until it waits too (for
  at most `GATHER`), then commits all their records in one transaction; the others wake to
  find theirs committed. Nothing reaches a sandbox, a person or the world before its record
  is durable, exactly as with a commit per record: only the number of commits changes.

A commit that fails (the disk full, an I/O error: `broker.kernel.faults`) leaves what waited
deferred, for the next commit (`Connected.transaction`): `run` tries again, after a delay that
doubles up to `MAX_RETRY`, and logs one line when it starts failing and one when it works
again; a task waiting in `durable` gets a typed error (`Conflict`), its records not durable,
except one whose records say what has happened (`settled`: a call's outcome), which waits on.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import deque
from typing import TYPE_CHECKING

import trio

from broker.errors import Conflict
from broker.kernel.faults import Streak

if TYPE_CHECKING:
    from broker.store.interface import Store

log = logging.getLogger("libos.kernel")

WINDOW = 0.005  # seconds
GATHER = 0.002  # seconds a group commit waits, at most, for other tasks to join it
MAX_RETRY = 1.0  # seconds, at most, between the tries of a commit that fails


class GroupCommit:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._asked = trio.Event()
        # (when, `deferred_total` then) of each `soon`, oldest first, until it is committed
        self._asks: deque[tuple[float, int]] = deque()
        self._committing: trio.Event | None = None  # set when the pending group commit ends
        self._joined = 0  # tasks that have joined a pending group commit, ever
        self._latest = 0  # `deferred_total` at the latest `soon`
        self.active = 0  # processes the scheduler drives: with more than one, records are grouped

    @property
    def grouping(self) -> bool:
        """Records may wait for a group commit: other processes run under planners too (with
        one, a commit of its own costs the same and waits for nobody)."""
        return self.active > 1

    def soon(self) -> None:
        """A write was deferred: commit it within `WINDOW` if nothing else does. While an
        earlier ask still waits, it is not noted: a commit takes every write deferred by
        then, so the one due for that ask, sooner, takes it too (`_oldest_ask` notes it after
        a commit that took only some of them: writes committed one at a time)."""
        store, asks = self.store, self._asks
        self._latest = total = store.deferred_total
        if asks and asks[-1][1] > store.committed_total:
            return
        asks.append((trio.current_time(), total))
        self._asked.set()

    def _oldest_ask(self) -> float | None:
        """When the oldest write that asked (`soon`) and is still not committed asked; None if
        every one has been committed (by the next step's write, or another process's)."""
        asks, committed = self._asks, self.store.committed_total
        while asks and asks[0][1] <= committed:
            when, _ = asks.popleft()
            if not asks and self._latest > committed:  # one not noted waits still: due as
                asks.append((when, self._latest))  # the last one noted before it
        return asks[0][0] if asks else None

    async def durable(self) -> None:
        """Return once every write deferred so far (this task's records among them) is
        committed: by the group commit this task leads or joins, or by any other
        transaction in between."""
        store = self.store
        target = store.deferred_total
        if store.committed_total >= target:
            return
        if self._committing is not None:  # another task leads the commit: join it
            self._joined += 1
            await self._committing.wait()
        else:
            self._committing = done = trio.Event()
            try:
                await self._gather()
                self._commit()
            finally:
                self._committing = None
                done.set()
        if store.committed_total < target:  # the leader's commit failed: fail here
            self._commit()

    async def settled(self) -> None:
        """`durable`, for records that say what has happened (a call's outcome, its answer
        waiting to leave): a commit that fails is tried again, backing off, until it works or
        the caller is cancelled. Never `Conflict`: the caller would report the call failed
        while its record, still waiting, commits once the store heals (and says it did not)."""
        delay = WINDOW
        while True:
            try:
                await self.durable()
            except Conflict:
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY)
            else:
                return

    def _commit(self) -> None:
        """What waits, committed now; a store that cannot (SQLite's error) is a typed error
        for the caller (PostgreSQL's, `StoreUnavailable`, is one already)."""
        try:
            self.store.commit_deferred()
        except sqlite3.Error as exc:
            raise Conflict(f"the store could not commit ({type(exc).__name__}: {exc}): "
                           "what waited for it is not durable") from exc

    async def _gather(self) -> None:
        """Let the other runnable tasks run until they wait (most of them for this commit,
        carrying their records): yield while a round of the scheduler brings a task to join
        or leaves one runnable; at most `GATHER` seconds, for tasks that never wait. (Not
        trio's wait for all tasks blocked: that would wake a test's own such wait early.)
        If this task is cancelled meanwhile, those waiting commit for themselves."""
        deadline = trio.current_time() + GATHER
        while True:
            joined = self._joined
            await trio.lowlevel.checkpoint()
            if (self._joined == joined
                    and not trio.lowlevel.current_statistics().tasks_runnable):
                return
            if trio.current_time() >= deadline:
                return

    async def run(self) -> None:
        """Commit what waits `WINDOW` after a write asked (`soon`). Whatever a commit raises, it
        is tried again (the rows wait still), never the kernel's end: a deferred write that
        no commit can take fails the callers of `durable` with a typed error."""
        delay, streak = WINDOW, Streak("the group commit")
        retry_at: float | None = None  # after a commit that failed: when to try again
        while True:
            await self._asked.wait()
            if retry_at is not None:
                await trio.sleep_until(retry_at)
            else:
                # Due `WINDOW` after the oldest write that asked and still waits: one that a
                # later write committed meanwhile (the next step's, mostly) needs no commit.
                asked = self._oldest_ask()
                while asked is not None and trio.current_time() < asked + WINDOW:
                    await trio.sleep_until(asked + WINDOW)
                    asked = self._oldest_ask()
                if asked is None:
                    self._asked = trio.Event()
                    continue
            self._asked = trio.Event()
            try:
                self.store.commit_deferred()
            except Exception as exc:
                streak.failed(exc)
                self._asked.set()
                delay = min(delay * 2, MAX_RETRY)
                retry_at = trio.current_time() + delay
            else:
                streak.worked()
                delay, retry_at = WINDOW, None
