"""Labels kept in the store (`broker.caps.labels`): a file's (by global virtual path) and a
process's context label. Objects and messages carry theirs in their own rows.

Every `fs.read` and `fs.write` looks up its file's labels, so a store that is the only writer
of its rows (an SQLite writer: one broker writes a store at a time) keeps the labels it looked
up or wrote in memory, a bounded number of files; a store other brokers write too
(PostgreSQL) always asks the database, so a label another broker gave a file is never missed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from broker.store.connection import Connected
from broker.store.json_column import Unreadable, read_json

MAX_CACHED_FILES = 4096


def dump_labels(labels: Iterable[str]) -> str | None:
    """A label set as stored: a sorted JSON list, or NULL for public."""
    names = sorted(labels)
    return json.dumps(names) if names else None


def load_labels(value: Any) -> frozenset[str]:
    names = read_json(value, "a label set", list) if value else []
    if not all(isinstance(name, str) for name in names):
        raise Unreadable("a label set holds something not text: edited in the database")
    return frozenset(names)


class LabelTables(Connected):
    # Set by a backend that is the only writer of its rows (see the module's note).
    sole_writer: bool = False
    _file_label_cache: dict[str, frozenset[str]] | None = None

    def _cache(self) -> dict[str, frozenset[str]] | None:
        if not self.sole_writer:
            return None
        if self._file_label_cache is None or len(self._file_label_cache) >= MAX_CACHED_FILES:
            self._file_label_cache = {}
        return self._file_label_cache

    def file_labels(self, path: str) -> frozenset[str]:
        cache = self._cache()
        if cache is not None and path in cache:
            return cache[path]
        with self._lock:  # no write falls between the read and the caching of what it read
            rows = self._query("SELECT labels FROM file_labels WHERE path=?", (path,))
            labels = load_labels(rows[0]["labels"]) if rows else frozenset()
            if cache is not None:
                cache[path] = labels
        return labels

    def set_file_labels(self, path: str, labels: Iterable[str]) -> None:
        """A file's labels from now on (none: public)."""
        stored = dump_labels(labels)
        cache = self._cache()
        with self._lock:
            if cache is not None:
                cache.pop(path, None)  # dropped first: a failed write leaves nothing stale
            with self.transaction() as db:
                if stored is None:
                    db.execute("DELETE FROM file_labels WHERE path=?", (path,))
                else:
                    db.execute("INSERT INTO file_labels(path, labels) VALUES (?,?) ON CONFLICT"
                               " (path) DO UPDATE SET labels=excluded.labels", (path, stored))

    def set_process_labels(self, pid: int, labels: Iterable[str]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE processes SET labels=? WHERE pid=?", (dump_labels(labels), pid))
