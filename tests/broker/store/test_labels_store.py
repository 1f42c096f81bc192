"""Labels in the store, on both backends (migration 3): files by path, object versions,
messages and processes keep their labels across a reopen; an SQLite writer's memory of files'
labels never hides a change, and a PostgreSQL store asks the database every time."""

from __future__ import annotations

from pathlib import Path

from broker.store.opening import open_store
from tests.broker.store.conftest import raw


def test_labels_round_trip_and_survive_a_reopen(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        pid = store.insert_process(parent=None, image="a", version="1", state="runnable",
                                   root="/", cwd="/")
        store.set_process_labels(pid, {"secret", "pii"})
        store.set_file_labels("/exports/a.txt", ["secret"])
        store.set_file_labels("/exports/b.txt", ["x"])
        store.set_file_labels("/exports/b.txt", [])  # public again: no row
        store.put_object("proc/1", "n", "json", {"v": 1}, pid=pid, expect_version=None,
                         labels={"secret"})
        store.put_object("proc/1", "n", "json", {"v": 2}, pid=pid, expect_version=None)
        message = store.put_message(pid, None, "hi", {"untrusted"})
    finally:
        store.close()
    store = open_store(store_at)
    try:
        assert store.get_process(pid)["labels"] == ["pii", "secret"]
        assert store.file_labels("/exports/a.txt") == {"secret"}
        assert store.file_labels("/exports/b.txt") == frozenset()
        assert store.get_object("proc/1", "n", 1)["labels"] == {"secret"}
        assert store.get_object("proc/1", "n")["labels"] == frozenset()
        taken = store.take_message(pid, taken_by=7)
        assert taken is not None and taken["id"] == message and taken["labels"] == ["untrusted"]
        assert store.message_taken_by(7)["labels"] == ["untrusted"]  # type: ignore[index]
    finally:
        store.close()


def test_a_remembered_file_label_follows_every_change(store_at: str | Path) -> None:
    store = open_store(store_at)
    try:
        assert store.file_labels("/f") == frozenset()  # looked up (and maybe remembered)
        store.set_file_labels("/f", ["secret"])
        assert store.file_labels("/f") == {"secret"}
        store.set_file_labels("/f", [])
        assert store.file_labels("/f") == frozenset()
        with raw(store_at) as db:  # behind its back: only a store other writers share sees it
            db.execute("INSERT INTO file_labels(path, labels) VALUES (?, ?)",
                       ("/f", '["secret"]'))
        assert store.file_labels("/f") == (frozenset() if store.sole_writer else {"secret"})
    finally:
        store.close()
