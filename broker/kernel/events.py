"""The event bus: state changes, denials, tool calls, tool logs. Stored, and followable live.

Tool log lines come in floods, so they are stored in batches: one transaction per batch,
written when it holds `BATCH_EVENTS` lines, every `FLUSH_INTERVAL` seconds, at the end of the
call that logged them, before any other event (the order of events is kept) and when the
kernel closes. A line is acknowledged with its call's result, so a crash can lose only lines
of calls still running; every other event is stored before `emit` returns, or (`deferring`)
by a deferred write that carries it, and shown to followers only once that has committed.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import trio

from broker.kernel.faults import STORE_FAULTS, Streak
from broker.store import SQLiteStore

FOLLOW_BUFFER = 10_000
BATCH_EVENTS = 128
FLUSH_INTERVAL = 0.05

Row = tuple[int | None, str, dict[str, Any]]


class EventBus:
    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._followers: set[trio.MemorySendChannel[dict[str, Any]]] = set()
        self._pending: list[Row] = []
        # Sandbox worker threads emit too; the lock keeps batches whole and in order.
        self._lock = threading.Lock()

    def emit(self, pid: int | None, kind: str, **data: Any) -> None:
        """Store an event now (after any batched lines before it)."""
        self._write([(pid, kind, data)])

    def emit_durably(self, pid: int | None, kind: str, **data: Any) -> None:
        """`emit`, for an event of a change already durable (a process's end): a store that
        fails now leaves it for the periodic flush, in order, rather than failing its caller
        after the change is made."""
        self.emit_all_durably([(pid, kind, data)])

    def emit_all_durably(self, rows: list[Row]) -> None:
        """`emit_durably` for several events (a tree kill's ends), in one write."""
        try:
            self._write(rows)
        except STORE_FAULTS:
            with self._lock:
                self._pending.extend(rows)
                full = len(self._pending) >= BATCH_EVENTS
            if full:
                with suppress(*STORE_FAULTS):  # (the periodic flush tries again)
                    self.flush()

    def emit_batched(self, pid: int | None, kind: str, **data: Any) -> None:
        """Store an event with the next batch (tool log lines)."""
        with self._lock:
            self._pending.append((pid, kind, data))
            full = len(self._pending) >= BATCH_EVENTS
        if full:
            self.flush()

    @contextmanager
    def deferring(self, pid: int | None, kind: str, **data: Any) -> Iterator[StoredLater]:
        """An event (after any batched lines before it) for a deferred write made in the block
        to store (`StoredLater.rows`), shown to followers once that write has committed
        (`StoredLater.show`). No event is stored before it meanwhile: the order is kept."""
        with self._lock:
            rows, self._pending = self._pending, []
            rows.append((pid, kind, data))
            yield StoredLater(self, rows)

    def flush(self) -> None:
        if self._pending:
            self._write([])

    async def flush_periodically(self) -> None:
        streak = Streak("the event flush")  # (the batch waits for the next try: `_write`)
        while True:
            await trio.sleep(FLUSH_INTERVAL)
            try:
                self.flush()
            except STORE_FAULTS as exc:
                streak.failed(exc)
            else:
                streak.worked()

    def _write(self, new: list[Row]) -> None:
        with self._lock:
            waiting, self._pending = self._pending, []
            rows = [*waiting, *new]
            if not rows:
                return
            try:
                seqs = self._store.append_events(rows)
            except BaseException:
                # Not written: the batch waits for the next write, in order (the events
                # emitted now fail their caller).
                self._pending = waiting
                raise
        if not self._followers:
            return
        events = [{"seq": seq, "pid": pid, "kind": kind, "data": data}
                  for seq, (pid, kind, data) in zip(seqs, rows, strict=True)
                  if seq is not None]  # (None: refused by the store, set aside)
        if trio.lowlevel.in_trio_run():
            self._deliver(events)
        else:
            # Emitted from a sandbox worker thread: hand delivery to the trio thread.
            trio.from_thread.run_sync(self._deliver, events)

    def _show(self, rows: list[Row], seqs: list[int]) -> None:
        """Stored events to followers, from the trio thread."""
        if self._followers:
            self._deliver([{"seq": seq, "pid": pid, "kind": kind, "data": data}
                           for seq, (pid, kind, data) in zip(seqs, rows, strict=True)])

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        for channel in list(self._followers):
            try:
                for event in events:
                    channel.send_nowait(event)
            except trio.WouldBlock:
                # A follower that cannot keep up is cut off rather than slowing the kernel;
                # it can read what it missed from the store.
                self._followers.discard(channel)
                channel.close()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                # Gone (its receiving end closed before `follow` let go of it): dropped, and
                # the followers beside it still get the events.
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


class StoredLater:
    """Events (`rows`) a deferred write stores in the transaction that carries it, shown to
    followers after its commit (`show`, on the trio thread, once `stored` says which)."""

    __slots__ = ("bus", "rows", "seqs", "stored")

    def __init__(self, bus: EventBus, rows: list[Row]) -> None:
        self.bus, self.rows = bus, rows
        self.stored: list[Row] = []
        self.seqs: list[int] = []

    def committed(self, seqs: list[int | None]) -> None:
        """Stored with these seqs, one per row (None: not stored)."""
        self.stored = [row for row, seq in zip(self.rows, seqs, strict=True) if seq is not None]
        self.seqs = [seq for seq in seqs if seq is not None]

    def show(self) -> None:
        self.bus._show(self.stored, self.seqs)
