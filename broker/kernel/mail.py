"""Durable mailboxes and named events: stored first, then waiters are woken.

A message is in the store before `send` returns; a waiting receiver is only a trio event
away from it, and after a restart a receiver that waits again finds what is there.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import trio

from broker.store import SQLiteStore


class Mail:
    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._mail: defaultdict[int, trio.Event] = defaultdict(trio.Event)
        self._events: defaultdict[str, trio.Event] = defaultdict(trio.Event)

    @staticmethod
    def _wake(table: defaultdict[Any, trio.Event], key: Any) -> None:
        event = table.pop(key, None)
        if event is None:
            return
        if trio.lowlevel.in_trio_run():
            event.set()
        else:  # sent from a sandbox worker thread
            trio.from_thread.run_sync(event.set)

    def send(self, sender: int | None, to: int, body: Any) -> int:
        message = self._store.put_message(to, sender, body)
        self._wake(self._mail, to)
        return message

    async def receive(self, pid: int, timeout: float | None, taken_by: int) -> Any:
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while True:
                arrived = self._mail[pid]
                message = self._store.take_message(pid, taken_by)
                if message is not None:
                    return message
                await arrived.wait()
        return None

    def raise_event(self, name: str, data: Any, source: int | None) -> int:
        event = self._store.raise_event(name, data, source)
        self._wake(self._events, name)
        return event

    async def wait_event(self, pid: int, name: str, timeout: float | None,
                         taken_by: int | None = None) -> Any:
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while True:
                raised = self._events[name]
                event = self._store.take_event(pid, name, taken_by)
                if event is not None:
                    return event
                await raised.wait()
        return None
