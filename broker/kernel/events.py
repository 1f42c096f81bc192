"""The event bus: state changes, denials, tool calls. Stored, and followable live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from broker.store import SQLiteStore

FOLLOW_BUFFER = 10_000


class EventBus:
    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._followers: set[trio.MemorySendChannel[dict[str, Any]]] = set()

    def emit(self, pid: int | None, kind: str, **data: Any) -> None:
        seq = self._store.append_event(pid, kind, data)
        event = {"seq": seq, "pid": pid, "kind": kind, "data": data}
        if not self._followers:
            return
        if trio.lowlevel.in_trio_run():
            self._deliver(event)
        else:
            # Emitted from a sandbox worker thread: hand delivery to the trio thread.
            trio.from_thread.run_sync(self._deliver, event)

    def _deliver(self, event: dict[str, Any]) -> None:
        for channel in list(self._followers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                # A follower that cannot keep up is cut off rather than slowing the kernel;
                # it can read what it missed from the store.
                self._followers.discard(channel)
                channel.close()
            except trio.ClosedResourceError:
                self._followers.discard(channel)

    @asynccontextmanager
    async def follow(self) -> AsyncIterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        send, receive = trio.open_memory_channel[dict[str, Any]](FOLLOW_BUFFER)
        self._followers.add(send)
        try:
            async with receive:
                yield receive
        finally:
            self._followers.discard(send)
            send.close()
