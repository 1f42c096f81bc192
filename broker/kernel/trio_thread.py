"""Trio's thread: where the broker's memory of processes changes.

Moving a process (its state and `done`, its task's cancel scope, the lineage counts, the
events shown to followers, a waiting exit landed, a new process's task started) touches trio
objects that only trio's own thread may touch. Most moves start there; a few start on a
sandbox worker thread, where a threaded WASM call answers cheap syscalls
(`Dispatcher.run_now`): a syscall that spends an ancestor's budget kills it
(`Budgets.charge` → `Kernel.terminate`), and `proc.signal` and `proc.spawn` kill, pause,
resume or start processes. Each such entry is `on_trio_thread`: called from a worker thread,
it hops to trio's thread and the worker waits for its answer (`trio.from_thread.run_sync`),
so the syscall answers after the move, as it would on trio's thread. Between the worker's
check and the hop, trio's thread may have moved processes (a kill of the caller): an entry
checks again there what the move needs (`spawn_child` and `signal`: the caller still live).

No deadlock: trio's thread waits for a worker thread only by awaiting it (`trio.to_thread`),
which leaves its loop free to run the hop; and a worker hops holding none of the broker's
locks (the store's is taken and let go inside each store call, and what runs under it right
after a commit on a worker, `PendingExit.after_commit`, only schedules work for trio's
thread, never hops).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import trio

P = ParamSpec("P")
R = TypeVar("R")


def on_trio_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` run on trio's thread: directly there, through a hop from a trio worker thread."""

    @functools.wraps(fn)
    def hop(*args: P.args, **kwargs: P.kwargs) -> R:
        if trio.lowlevel.in_trio_run():
            return fn(*args, **kwargs)
        return trio.from_thread.run_sync(functools.partial(fn, *args, **kwargs))

    return hop
