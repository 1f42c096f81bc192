"""`broker.store.vouch`: a stored tool registration against the `spec_hash` its
`tool.register` outcome carries; one recorded before there was a `spec_hash` is checked by its
code (lang, hash) alone, as it always was."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from broker.store import AuditRecord
from broker.store.connection import dump_json
from broker.store.opening import open_store
from broker.store.vouch import SPEC_HASH, spec_digest

SOURCE = b"export default () => 1;"
SOURCE_HASH = hashlib.sha256(SOURCE).hexdigest()
SPEC: dict[str, Any] = {
    "lang": "ts", "hash": SOURCE_HASH, "description": "lit \u00e9t\u00e9 \u2603",
    "schema": {"type": "object", "properties": {"x": {"type": "number", "maximum": 1e-07,
                                                      "minimum": -2.5}}},
    "manifest": [{"kind": "fs", "scope": "/data/pub/**", "rights": ["read"]}],
    "manifest_hash": "0123", "labels": ["secret"]}


def test_the_digest_is_the_same_for_a_spec_and_its_row_read_back() -> None:
    reordered = json.loads(json.dumps(dict(reversed(SPEC.items())), indent=1))
    assert spec_digest(json.loads(dump_json(SPEC))) == spec_digest(SPEC) == spec_digest(
        reordered)
    assert spec_digest({**SPEC, "manifest": None}) != spec_digest(SPEC)


def _registered(target: Path | str, pid: int, spec: dict[str, Any],
                vouched: bool) -> dict[str, dict[str, Any]]:
    """A registration as the broker writes it (with or without the spec's digest in its
    outcome), its row edited to `spec` after; what loading the process's tools gives."""
    store = open_store(target)
    try:
        store.put_tool_source(SOURCE_HASH, "ts", SOURCE)
        intent = store.append_audit(AuditRecord(
            "intent", "tool.register", pid=pid, resource="ts",
            detail={"args": {"name": "t", "lang": "ts", "source": "…"}}))
        detail: dict[str, Any] = {"ok": True, "intent": intent, "result": {
            "name": "t", "lang": "ts", "hash": SOURCE_HASH}}
        if vouched:
            detail[SPEC_HASH] = spec_digest(SPEC)
        store.put_process_tool(pid, "t", SPEC)
        store.append_audit(AuditRecord("outcome", "tool.register", pid=pid, resource="ts",
                                       detail=detail))
        with store.transaction() as db:
            db.execute("UPDATE process_tools SET spec=? WHERE pid=? AND name='t'",
                       (json.dumps(spec), pid))
        return store.process_tools(pid)
    finally:
        store.close()


@pytest.mark.parametrize("vouched", [True, False])
def test_a_widened_row_is_refused_where_its_record_carries_the_digest(
        db_path: Path, vouched: bool) -> None:
    widened = SPEC | {"manifest": None}
    tools = _registered(db_path, 7, widened, vouched)
    if vouched:
        assert "edited" in tools["t"]["refused"] and tools["t"]["manifest"] == []
    else:  # recorded before the digest: its code is all the chain can vouch for
        assert "refused" not in tools["t"] and tools["t"]["manifest"] is None
