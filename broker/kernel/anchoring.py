"""Signing the audit chain's head while a kernel runs.

An append moves the head and its MAC on (microseconds); a signature costs tens of
microseconds, so it is made here, at most every `SIGN_INTERVAL` and only when records came,
rather than on every append. The store also signs when it opens and when it closes, so what a
third party verifies with the public key alone lags a running broker by at most a moment.
Signing commits what waits first; while the store cannot, the head waits unsigned
(`broker.kernel.faults`).
"""

from __future__ import annotations

import trio

from broker.kernel.faults import STORE_FAULTS, Streak
from broker.store import Store

SIGN_INTERVAL = 0.05


async def sign_periodically(store: Store) -> None:
    streak = Streak("signing the audit chain's head")
    while True:
        await trio.sleep(SIGN_INTERVAL)
        try:
            store.sign_anchor()
        except STORE_FAULTS as exc:
            streak.failed(exc)
        else:
            streak.worked()
