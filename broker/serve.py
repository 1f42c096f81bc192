"""`libos serve`: one broker of many over a shared PostgreSQL store. It takes work (live
processes no broker holds, see `broker.kernel.leasing`), runs it, and on SIGTERM or SIGINT
(or after `--for` seconds, or with `--until-idle` once no live process is left in the store)
gives back what it holds and closes."""

from __future__ import annotations

import os
import re
import signal
import socket
from typing import Any

import trio
from rich.console import Console

from broker.errors import InvalidArgument
from broker.kernel import Kernel
from broker.kernel.leasing import LEASE_TTL
from broker.store.location import is_database
from broker.store.postgres import shown_address

IDLE_POLL = 0.25


def default_identity() -> str:
    """This host's name and this OS process's id (unique among running brokers)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


async def serve(target: str, identity: str | None, console: Console, *,
                lease_ttl: float = LEASE_TTL, seconds: float = 0,
                until_idle: bool = False) -> dict[str, Any]:
    if not is_database(target):
        raise InvalidArgument("libos serve shares a PostgreSQL store with other brokers: give "
                              "--db postgresql://...")
    if not lease_ttl > 0:
        raise InvalidArgument("--lease is a positive number of seconds")
    broker = identity or default_identity()
    async with Kernel.open(target, broker=broker, lease_ttl=lease_ttl) as kernel:
        console.print(f"broker {broker}: serving {shown_address(target)}")
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals, \
                trio.move_on_after(seconds or float("inf")):
            async with trio.open_nursery() as nursery:
                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                while True:
                    await trio.sleep(IDLE_POLL)
                    if until_idle and not kernel.store.live_pids():
                        nursery.cancel_scope.cancel()
                        break
        leasing = kernel.leasing
        ending = [pid for pid in leasing.held if pid not in leasing.ended
                  and (p := kernel.loaded(pid)) is not None and not p.alive]
        # (the newest of each, in a long run: `Recent`; the totals count them all)
        return {"broker": broker, "finished": sorted({*leasing.ended, *ending}),
                "finished_total": leasing.ended.total + len(ending),
                "given_up": [{"pid": pid, "why": why} for pid, why in leasing.given_up],
                "given_up_total": leasing.given_up.total}
