"""Being told, not only polling: one broker of many over a PostgreSQL store listens on the
store (LISTEN/NOTIFY) for answers and controls written by other brokers and the CLI, and
applies them at once; a message or an event stored by another broker wakes the receive or
the wait here that it may be for (which reads the store again: a notice is only a hint).
The polling of the approval queue, the controls and the waits stays, the fallback when a
notice is lost (the listening connection broken, say)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from broker.kernel.ports import NoticeNeeds

log = logging.getLogger("libos.kernel")

WAIT = 0.5  # seconds a listening thread waits before it looks again (and a close waits)


async def listen(kernel: NoticeNeeds) -> None:
    while True:
        told = await trio.to_thread.run_sync(kernel.store.wait_for_notice, WAIT,
                                             abandon_on_cancel=True)
        if told:
            try:
                kernel.queue.sweep()
                kernel.controls.apply()
                kernel.mail.told(told)
            except Exception:
                log.exception("a notice from the store was not applied (the poll will)")
