"""A store that fails for a while (the disk full, an I/O error, a lock held past its timeout,
a database connection cut): what a background task of the kernel does about it.

A write that fails is rolled back, and what waited to be committed with it stays waiting for
the next transaction (`Connected.transaction`), so nothing of it is lost or shown. The
background tasks that write (the group commit's timer, the event flush, the controls' poll)
each go on: they log one line when their store work starts failing and one when it works
again (`Streak`), never a line a try, and never end the kernel. A caller that needs its write
durable meanwhile gets a typed error (`GroupCommit.durable`: `Conflict`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from broker.errors import Conflict, InvalidArgument
from broker.store.pg_connection import StoreFailed

log = logging.getLogger("libos.kernel")

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
FIRST_RETRY, MAX_RETRY = 0.15, 2.0  # seconds between tries: the first, at most

# What a store raises when it cannot write now (SQLite's own errors; PostgreSQL's are
# `StoreFailed`, `StoreUnavailable` among them, by the time they leave the store).
STORE_FAULTS: tuple[type[Exception], ...] = (sqlite3.Error, StoreFailed)


class Streak:
    """The failures in a row of one background task's store work, logged at their start and
    end only."""

    __slots__ = ("failures", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
        if not self.failures:
            log.warning("%s failed, tried again until it works: %s: %s", self.what,
                        type(exc).__name__, exc)
        self.failures += 1

    def worked(self) -> None:
        if self.failures:
            log.warning("%s works again (after %d failures)", self.what, self.failures)
            self.failures = 0


# How long a process's decided end waits for a store that keeps failing (`until_end_stored`).
STORE_PATIENCE = 600.0


class StoreGaveUp(Conflict):
    """A decided write (a process's end) found the store failing for its patience: nothing
    of it was stored. The store still says what it said before (the process live), and a
    broker that opens it again takes it from there (the process resumes from its last
    checkpoint). A `Conflict` on the wire."""


async def until_stored(what: str, attempt: Callable[[], T], *,
                       patience: float | None = None) -> T:
    """`attempt()` until the store takes its writes: a task whose outcome is decided, only
    its record waiting (an answer to apply), waits for the store to heal, backing off, its
    streak logged; with `patience` (`STORE_PATIENCE` for a process's end), a store failing
    that long is `StoreGaveUp`, nothing written (a store that does not heal, a constraint a
    bug broke, must not keep a task trying and its waiters waiting for good). Cancel it to
    stop sooner."""
    delay, streak = FIRST_RETRY, Streak(what)
    give_up = trio.current_time() + (patience if patience is not None else float("inf"))
    while True:
        try:
            done = attempt()
        except STORE_FAULTS as exc:
            streak.failed(exc)
            if trio.current_time() + delay > give_up:
                raise StoreGaveUp(
                    f"{what}: the store failed its writes for {patience:g} s "
                    f"({type(exc).__name__}: {str(exc)[:200]}); nothing of it was stored"
                ) from exc
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY)
        else:
            streak.worked()
            return done


async def until_end_stored(pid: int, attempt: Callable[[], T]) -> T:
    """`until_stored` for the end of process `pid`: `StoreGaveUp` after `STORE_PATIENCE`."""
    return await until_stored(f"ending process {pid}", attempt, patience=STORE_PATIENCE)


# Set on SQLite's error when it refused the record of a call already carried out (its
# effect made): the call's syscall name (`Dispatcher._recorded`; the innermost call's).
CARRIED_OUT = "libos_carried_out"
# Set on it too when the call's registrations were taken back (`Dispatcher._take_back`): what
# each undo said ("tool 'x' is not registered").
UNDONE = "libos_undone"


def store_conflict(exc: Exception) -> Conflict:
    """What a host is told of SQLite's own error: the write it made was rolled back, so the
    act did not happen (try again once the store heals). Unless the write was the record of
    a call already carried out (`CARRIED_OUT`): then not "nothing of it was done", which
    would invite doing it again, but that its outcome is unknown."""
    done = getattr(exc, CARRIED_OUT, None)
    taken = getattr(exc, UNDONE, None)
    if done is not None and taken:
        return Conflict(f"{done} was carried out, but the store failed its record "
                        f"({type(exc).__name__}: {exc}): {'; '.join(taken)} (taken back); "
                        "the rest of its outcome is unknown, not undone")
    if done is not None:
        return Conflict(f"{done} was carried out, but the store failed its record "
                        f"({type(exc).__name__}: {exc}): its outcome is unknown; it was not "
                        "undone")
    return Conflict(f"the store failed its write ({type(exc).__name__}: {exc}); nothing of "
                    "it was done")


class _TypedStoreFaults:
    """`with store_faults_typed:` SQLite's own error raised in the block is a typed
    `Conflict` (`store_conflict`); PostgreSQL's are typed by the store already
    (`StoreFailed`); text the driver cannot encode is `InvalidArgument`. A class, not a
    generator: a host's every tool call goes through it."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 trace: object) -> None:
        if kind is not None and issubclass(kind, sqlite3.Error):
            raise store_conflict(exc) from exc  # type: ignore[arg-type]
        if kind is not None and issubclass(kind, UnicodeEncodeError):
            # A name the host gave holds a lone surrogate: the driver cannot encode it (its
            # write rolled back whole), so the verb is refused, typed.
            raise InvalidArgument("the store cannot hold text that is not Unicode (a lone "
                                  "surrogate)") from None


store_faults_typed = _TypedStoreFaults()


def typed_store_faults(method: F) -> F:
    """A host's verb (`Kernel.kill`, `spawn`, ...): a store that fails is a typed `Conflict`,
    never the driver's own error (`store_faults_typed`). Each verb writes the store
    before the broker's memory, so the memory still says what the store does."""
    if inspect.iscoroutinefunction(method):
        @functools.wraps(method)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            with store_faults_typed:
                return await method(*args, **kwargs)
        return run_async  # type: ignore[return-value]

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with store_faults_typed:
            return method(*args, **kwargs)
    return run  # type: ignore[return-value]
