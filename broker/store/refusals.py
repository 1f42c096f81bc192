"""A deferred write the store refuses for good (a poisoned write): told apart from a failure
that passes (a full disk, a lock, a lost connection), so that it is set aside instead of
waiting in front of every later commit, which would each fail on it again (`Connected`).

Refused for good: a value the database never takes (text that is not UTF-8, a NUL in
PostgreSQL's text, an integer past 64 bits, a type it cannot bind), or a constraint the
row breaks. Retrying such a write fails the same way, whoever's transaction carries it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from broker.errors import InvalidArgument
from broker.store.audit import INT64
from broker.store.pg_connection import StoreFailed, StoreRefused

# What SQLite (and the driver, binding a value) raises for a write it will never take.
_FOR_GOOD = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError,
             sqlite3.InterfaceError, OverflowError, UnicodeEncodeError, InvalidArgument,
             StoreRefused)


class WriteRefused(InvalidArgument):
    """A write that waited for a commit (`Connected.defer`) was refused by the store for good
    and set aside: nothing of it was written. Its owner (the process it was written for) is
    told with this; the other writes that waited with it are committed without it."""


class RefusedBeside(StoreFailed):
    """A transaction whose own statements had run when a deferred write it carried was
    refused for good (PostgreSQL finds some refusals only when the batch is sent): that write
    is set aside, and this transaction wrote nothing. A store's failure that passes, as a
    full disk's is (a `Conflict`): the caller may try again, and it will work."""


def refused_for_good(exc: BaseException) -> bool:
    """Would the store refuse the write that raised `exc` again, every time? (Not a trigger's
    refusal: a trigger decides on the database's state, which may change, as a disk that
    fills and empties does; libos installs none.)"""
    if not isinstance(exc, _FOR_GOOD):
        return False
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CONSTRAINT_TRIGGER:
        return False
    # (sqlite3's ProgrammingError for a closed connection says nothing of the write)
    return not (isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc))


def owners_of(write: object) -> list[Any]:
    """The processes a deferred write was made for, where it says (`pids`, of the items it
    writes now, or `pid`): unchecked (`told` keeps the pids a store can name)."""
    pids = getattr(write, "pids", None)
    return [getattr(write, "pid", None)] if pids is None else list(pids)


def told(owners: list[Any]) -> list[int]:
    """Of `owners`, the pids of processes a store can hold (not None, nor an event's pid
    past 64 bits: no process has it, and it would be kept for ever)."""
    return [p for p in owners if type(p) is int and p in INT64]
