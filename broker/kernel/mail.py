"""Durable mailboxes and named events: stored first, then waiters are woken.

A message is in the store before `send` returns; a waiting receiver is only a trio event
away from it, and after a restart a receiver that waits again finds what is there. Where
brokers share a store, what another broker stored wakes a wait here through the store's
notice (`told`), and a wait looks again every `SHARED_POLL` seconds in case a notice is lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from broker.store import SQLiteStore

SHARED_POLL = 0.2  # seconds between looks of a wait, where other brokers store too


class _Wakeups:
    """One trio event per key (a pid's mailbox, an event name) while someone waits on it.
    A key is forgotten when its last waiter leaves, so keys waited on once (job:<id>, the
    pids of processes long gone) are not kept for ever."""

    def __init__(self) -> None:
        self._events: dict[Hashable, trio.Event] = {}
        self._waiters: Counter[Hashable] = Counter()

    def __len__(self) -> int:
        return len(self._events) + len(self._waiters)

    @contextmanager
    def watching(self, key: Hashable) -> Iterator[None]:
        self._waiters[key] += 1
        try:
            yield
        finally:
            self._waiters[key] -= 1
            if not self._waiters[key]:
                del self._waiters[key]
                self._events.pop(key, None)

    def event(self, key: Hashable) -> trio.Event:
        return self._events.setdefault(key, trio.Event())

    def wake_all(self) -> None:
        for key in list(self._events):
            self.wake(key)

    def wake(self, key: Hashable) -> None:
        event = self._events.pop(key, None)
        if event is None:
            return
        if trio.lowlevel.in_trio_run():
            event.set()
        else:  # sent from a sandbox worker thread
            trio.from_thread.run_sync(event.set)


class Mail:
    def __init__(self, store: SQLiteStore, *, shared: bool = False) -> None:
        self._store = store
        self._mail = _Wakeups()
        self._events = _Wakeups()
        self._poll = SHARED_POLL if shared else float("inf")

    def told(self, notices: list[str]) -> None:
        """Another broker stored a message or raised an event (a notice from the store, a
        hint only: the waits it wakes read the store again)."""
        for notice in notices:
            kind, _, key = notice.partition(":")
            if kind == "mail" and key.isdigit():
                self._mail.wake(int(key))
            elif kind == "event" and key:
                self._events.wake(key)
            elif kind == "event":  # a name too long for a notice
                self._events.wake_all()

    def watched(self) -> int:
        """What the broker holds for waits (none once every wait has ended)."""
        return len(self._mail) + len(self._events)

    def send(self, sender: int | None, to: int, body: Any,
             labels: frozenset[str] = frozenset()) -> int:
        message = self._store.put_message(to, sender, body, labels)
        self._mail.wake(to)
        return message

    async def receive(self, pid: int, timeout: float | None, taken_by: int,
                      past_aside: bool = False) -> Any:
        """The oldest message (`past_aside`: not one set aside: a tool's receive)."""
        with trio.move_on_after(float("inf") if timeout is None else timeout), \
                self._mail.watching(pid):
            while True:
                arrived = self._mail.event(pid)
                message = self._store.take_message(pid, taken_by, past_aside=past_aside)
                if message is not None:
                    return message
                with trio.move_on_after(self._poll):
                    await arrived.wait()
        return None

    def set_aside(self, pid: int, intent: int) -> list[int]:
        """What the receive of `intent` took goes back set aside (it could not be sent to the
        tool): a tool's receive goes on past it; a receive waiting beside it looks again."""
        ids = self._store.set_aside_messages(intent)
        if ids:
            self._mail.wake(pid)
        return ids

    def set_aside_event(self, name: str, intent: int) -> list[int]:
        """The event the wait of `intent` saw goes back set aside for its process (it could
        not be sent to the tool): a tool's wait goes on past it."""
        ids = self._store.set_aside_events(intent)
        if ids:
            self._events.wake(name)
        return ids

    def raise_event(self, name: str, data: Any, source: int | None,
                    labels: frozenset[str] = frozenset()) -> int:
        event = self._store.raise_event(name, data, source, labels)
        self._events.wake(name)
        return event

    async def wait_event(self, pid: int, name: str, timeout: float | None,
                         taken_by: int | None = None, past_aside: bool = False) -> Any:
        """The oldest event of `name` unseen by `pid` (`past_aside`: not one set aside for it:
        a tool's wait)."""
        with trio.move_on_after(float("inf") if timeout is None else timeout), \
                self._events.watching(name):
            while True:
                raised = self._events.event(name)
                event = self._store.take_event(pid, name, taken_by, past_aside=past_aside)
                if event is not None:
                    return event
                with trio.move_on_after(self._poll):
                    await raised.wait()
        return None
