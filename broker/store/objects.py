"""Object Memory: typed, versioned objects in namespaces, and their types."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from broker.errors import Conflict, NotFound
from broker.store.connection import Connected, Row, dump_json, where
from broker.store.data_labels import OBJECT
from broker.store.labels import dump_labels, load_labels


class ObjectTables(Connected):
    # -- object memory -----------------------------------------------------------------------

    def put_type(self, name: str, schema: dict[str, Any]) -> None:
        with self.transaction() as db:
            row = db.execute("SELECT schema FROM object_types WHERE name=?", (name,)).fetchone()
            if row is not None and json.loads(row[0]) != schema:
                raise Conflict(f"object type {name!r} is already defined differently")
            db.execute("INSERT INTO object_types(name, schema) VALUES (?,?)"
                       " ON CONFLICT DO NOTHING", (name, dump_json(schema)))

    def object_types(self) -> dict[str, dict[str, Any]]:
        return {r["name"]: json.loads(r["schema"])
                for r in self._query("SELECT name, schema FROM object_types")}

    def put_object(self, ns: str, name: str, type_: str, payload: Any, *, pid: int | None,
                   expect_version: int | None, labels: Iterable[str] = ()) -> int:
        """A new version; `labels`: those of the data it holds, kept with it."""
        with self.transaction() as db:
            row = db.execute("SELECT MAX(version) FROM objects WHERE ns=? AND name=?",
                             (ns, name)).fetchone()
            current = row[0] or 0
            if expect_version is not None and expect_version != current:
                raise Conflict(f"object {ns}/{name} is at version {current}, "
                               f"not {expect_version}")
            version = current + 1
            db.execute("INSERT INTO objects(ns, name, version, type, payload, pid, created,"
                       " labels) VALUES (?,?,?,?,?,?,?,?)",
                       (ns, name, version, type_, dump_json(payload), pid, self._now(),
                        dump_labels(labels)))
            return version

    def get_object(self, ns: str, name: str, version: int | None = None) -> dict[str, Any]:
        if version is None:
            rows = self._query("SELECT * FROM objects WHERE ns=? AND name=? "
                               "ORDER BY version DESC LIMIT 1", (ns, name))
        else:
            rows = self._query("SELECT * FROM objects WHERE ns=? AND name=? AND version=?",
                               (ns, name, version))
        if not rows:
            raise NotFound(f"no object {ns}/{name}" + (f" version {version}" if version else ""))
        return self._labelled(self._object_row(rows[0]))

    def list_objects(self, ns: str | None = None, prefix: str = "") -> list[dict[str, Any]]:
        """The newest version of each object (in `ns`, or everywhere), without payloads."""
        only, values = where({"ns": ns})
        rows = self._query(  # each object's newest version, and the type it has there
            "SELECT ns, name, version, type, labels FROM objects o WHERE"
            " substr(name, 1, CAST(? AS INTEGER))=?"  # (a cast: as `approval_ids_starting`)
            f"{only} AND version=(SELECT MAX(version) FROM objects WHERE ns=o.ns AND"
            " name=o.name) ORDER BY ns, name", (len(prefix), prefix, *values))
        return [self._labelled({**r, "labels": load_labels(r["labels"])}) for r in map(dict, rows)]

    def _labelled(self, row: dict[str, Any]) -> dict[str, Any]:
        """`row`'s labels joined with what the chain shows its name's versions were written
        with (`broker.store.data_labels`: a writer's dropped label is kept)."""
        vouched = self.vouched_labels((OBJECT, f"{row['ns']}/{row['name']}"))  # type: ignore[attr-defined]
        return {**row, "labels": row["labels"] | vouched} if vouched else row

    @staticmethod
    def _object_row(row: Row) -> dict[str, Any]:
        out = dict(row)
        out["payload"] = json.loads(out["payload"])
        out["labels"] = load_labels(out.get("labels"))
        return out

