"""Opening a store: the backend its address names (see `broker.store.location`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.errors import InvalidArgument
from broker.store.location import is_database


def open_store(target: str | Path, *, clock: Callable[[], float] = time.time,
               writer: bool = True, durability: str = "normal",
               audit_key: str | Path | None = None, broker: str | None = None) -> Any:
    """The store at `target`: PostgreSQL for a `postgresql://` address, else an SQLite file.
    `broker`: this broker's identity, one of many sharing a PostgreSQL store."""
    if is_database(target):
        from broker.store.postgres import PostgresStore

        return PostgresStore(str(target), clock=clock, writer=writer, durability=durability,
                             audit_key=audit_key, broker=broker)
    if broker is not None:
        raise InvalidArgument("brokers share a PostgreSQL store (postgresql://...), not an"
                              f" SQLite file: {target}")
    from broker.store.sqlite import SQLiteStore

    return SQLiteStore(target, clock=clock, writer=writer, durability=durability,
                       audit_key=audit_key)
