"""Labels kept in the store (`broker.caps.labels`): a file's (by global virtual path) and a
process's context label. Objects and messages carry theirs in their own rows. A file's and an
object's label in force is its row's joined with what the chain's records show it was written
with (`broker.store.data_labels`): a row a writer dropped a label from keeps it.

Every `fs.read` and `fs.write` looks up its file's labels, so a store that is the only writer
of its rows (an SQLite writer: one broker writes a store at a time) keeps the labels it looked
up or wrote in memory, a bounded number of files; a store other brokers write too
(PostgreSQL) always asks the database, so a label another broker gave a file is never missed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from broker.store.data_labels import FILE, DataKey
from broker.store.json_column import Unreadable, read_json
from broker.store.label_ceiling import LabelCeiling

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


class LabelTables(LabelCeiling):
    # Set by a backend that is the only writer of its rows (see the module's note).
    sole_writer: bool = False
    _file_label_cache: dict[str, frozenset[str]] | None = None
    # The files this store narrowed below what the chain showed at its open (a replace): its
    # row is this broker's, as it wrote it, joined (shared) with what records after the
    # replace's intent show (its seq): a peer's. Bounded: one forgotten is over-labelled again.
    _narrowed_here: dict[str, int] | None = None

    def _cache(self) -> dict[str, frozenset[str]] | None:
        if not self.sole_writer:
            return None
        if self._file_label_cache is None or len(self._file_label_cache) >= MAX_CACHED_FILES:
            self._file_label_cache = {}
        return self._file_label_cache

    def vouched_labels(self, key: DataKey) -> frozenset[str]:
        """The labels the chain's counted records show `key`'s data was written with (the
        links' walk at the open: later writes are this broker's, in the rows as it wrote);
        the label ceiling once the walked chain is broken (`broker.store.label_ceiling`)."""
        links = self._walked_links()
        return self.over_labelled(links.data_labels(key), links)

    def _walked_links(self) -> Any:
        return getattr(self, "_links", None) or self.chain_links()  # type: ignore[attr-defined]

    def file_labels(self, path: str) -> frozenset[str]:
        """A file's (or a directory listing's) labels: its row's, and what the chain shows."""
        row = self._row_file_labels(path)
        if self._narrowed_here is not None and path in self._narrowed_here:
            links = self._walked_links()
            return row | self.over_labelled(
                links.data_labels_since((FILE, path), self._narrowed_here[path]), links)
        return row | self.vouched_labels((FILE, path))

    def _row_file_labels(self, path: str) -> frozenset[str]:
        cache = self._cache()
        if cache is not None and path in cache:
            return cache[path]
        with self._lock:  # no write falls between the read and the caching of what it read
            rows = self._query("SELECT labels FROM file_labels WHERE path=?", (path,))
            labels = load_labels(rows[0]["labels"]) if rows else frozenset()
            if cache is not None:
                cache[path] = labels
        return labels

    def set_file_labels(self, path: str, labels: Iterable[str], *,
                        replaced_at: int | None = None) -> None:
        """A file's labels from now on (none: public). A replace's narrowing names its
        intent's seq (`replaced_at`): what records after it show written there still counts."""
        labels = frozenset(labels)
        stored = dump_labels(labels)
        # (a join holds them: a narrowing; of the chain's floor, the ceiling aside)
        if not self._walked_links().data_labels((FILE, path)) <= labels:
            if self._narrowed_here is None or len(self._narrowed_here) >= MAX_CACHED_FILES:
                self._narrowed_here = {}
            self._narrowed_here[path] = self._walked_links().narrowed((FILE, path), replaced_at)
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
