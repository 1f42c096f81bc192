"""Labels kept in the store (`broker.caps.labels`): a file's (by global virtual path) and a
process's context label. Objects and messages carry theirs in their own rows."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from broker.store.connection import Connected


def dump_labels(labels: Iterable[str]) -> str | None:
    """A label set as stored: a sorted JSON list, or NULL for public."""
    names = sorted(labels)
    return json.dumps(names) if names else None


def load_labels(value: Any) -> frozenset[str]:
    return frozenset(json.loads(value)) if value else frozenset()


class LabelTables(Connected):
    def file_labels(self, path: str) -> frozenset[str]:
        rows = self._query("SELECT labels FROM file_labels WHERE path=?", (path,))
        return load_labels(rows[0]["labels"]) if rows else frozenset()

    def set_file_labels(self, path: str, labels: Iterable[str]) -> None:
        """A file's labels from now on (none: public)."""
        stored = dump_labels(labels)
        with self.transaction() as db:
            if stored is None:
                db.execute("DELETE FROM file_labels WHERE path=?", (path,))
            else:
                db.execute("INSERT INTO file_labels(path, labels) VALUES (?,?) ON CONFLICT"
                           " (path) DO UPDATE SET labels=excluded.labels", (path, stored))

    def set_process_labels(self, pid: int, labels: Iterable[str]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE processes SET labels=? WHERE pid=?", (dump_labels(labels), pid))
