"""Group commit of checkpoints: a bounded wait for another write to carry a deferred one.

The checkpoint after a step (its observation with it) is deferred (`Connected.defer`): the
next write of any process commits it in the same transaction, usually the next step's own
checkpoint and `tool.call` intent, or another process's record. So that a planner that thinks
for a long time (a model) does not leave it waiting, this task commits whatever is still
deferred `WINDOW` seconds after a step asked. Its loss in a crash inside that window acknowledges
nothing: the step's `tool.call` outcome is durable before the step ends, and recovery hands the
step that outcome (as it does after a crash between the outcome and the checkpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from broker.store.interface import Store

WINDOW = 0.005  # seconds


class GroupCommit:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._asked = trio.Event()

    def soon(self) -> None:
        """A write was deferred: commit it within `WINDOW` if nothing else does."""
        self._asked.set()

    async def run(self) -> None:
        while True:
            await self._asked.wait()
            await trio.sleep(WINDOW)
            self._asked = trio.Event()
            self.store.commit_deferred()
