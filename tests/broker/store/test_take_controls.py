"""The broker polls for the requests `libos` commands leave (pause, resume, kill, fork)
several times a second. With none waiting (nearly always) the poll reads: it takes no write
lock, so it never waits for (nor holds up) another writer: a CLI, another broker. A request
committed by another OS process is still taken, once. Both backends."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from broker.store.keys import AuditKey
from broker.store.location import is_database
from broker.store.opening import open_store
from broker.store.pg_connection import connect
from broker.store.postgres import WRITE_LOCK


@contextmanager
def _write_lock_held(store_at: Path | str) -> Iterator[None]:
    """Another session holds the store's write lock (a writer in the middle of its
    transaction) until the block ends."""
    if is_database(store_at):
        other: Any = connect(str(store_at), "other")
        other.execute("BEGIN")
        other.execute(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")
    else:
        other = sqlite3.connect(store_at, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def _process(store: Any, state: str = "running") -> int:
    return int(store.insert_process(parent=None, image="agent", version="1", state=state,
                                    root="/", cwd="/"))


def test_a_poll_with_nothing_to_take_takes_no_write_lock(store_at: Path | str) -> None:
    store = open_store(store_at)
    try:
        pid, other = _process(store), _process(store)
        store.add_control("pause", pid)
        assert [c["verb"] for c in store.take_controls()] == ["pause"]
        store.add_control("kill", other)  # another broker's, left pending
        with ThreadPoolExecutor(1) as pool, _write_lock_held(store_at):
            # (a poll that waited for the lock would still wait: it is held until the end)
            assert pool.submit(store.take_controls, {pid}).result(timeout=10) == []
    finally:
        store.close()


def test_a_request_another_process_leaves_is_taken_once_and_only_by_its_broker(
        store_at: Path | str) -> None:
    store = open_store(store_at)
    try:
        mine, theirs = _process(store), _process(store)
        cli = open_store(store_at, writer=False)  # as `libos kill` opens it
        try:
            cli.add_control("kill", mine, {"reason": "r"}, signer=AuditKey.open())
        finally:
            cli.close()
        assert store.take_controls({theirs}) == []  # another broker's process: left for it
        [taken] = store.take_controls({mine})
        assert (taken["verb"], taken["pid"], taken["arg"]) == ("kill", mine, {"reason": "r"})
        assert store.take_controls() == []
    finally:
        store.close()
