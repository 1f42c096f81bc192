"""The audit chain: each record's hash covers its content and the hash of the one before.

Editing a record breaks its own hash; removing, inserting or reordering records breaks the
link (`prev_hash`) or the sequence of the record after. `verify_chain` names the first
record where each break shows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=repr)


def args_hash(args: Any) -> str:
    """The hash that binds an approval (and an audit record) to exact arguments."""
    return hashlib.sha256(canonical_json(args).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    phase: str
    syscall: str
    pid: int | None = None
    inv: int | None = None
    tool: str | None = None
    resource: str | None = None
    args_hash: str | None = None
    cap_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredRecord:
    seq: int
    ts: float
    record: AuditRecord
    detail_json: str
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {
            "seq": self.seq,
            "ts": self.ts,
            "pid": r.pid,
            "inv": r.inv,
            "tool": r.tool,
            "phase": r.phase,
            "syscall": r.syscall,
            "resource": r.resource,
            "args_hash": r.args_hash,
            "cap_id": r.cap_id,
            "detail": json.loads(self.detail_json),
            "hash": self.hash,
        }


def record_hash(seq: int, ts: float, record: AuditRecord, detail_json: str, prev: str) -> str:
    r = record
    body = canonical_json(
        [seq, ts, r.pid, r.inv, r.tool, r.phase, r.syscall, r.resource, r.args_hash,
         r.cap_id, detail_json, prev]
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int
    what: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.what}"


def verify_chain(records: Iterable[StoredRecord]) -> tuple[int, list[ChainProblem]]:
    """Walk the chain in stored order. Returns (records checked, problems)."""
    problems: list[ChainProblem] = []
    prev_hash = GENESIS
    prev_seq = 0
    count = 0
    for stored in records:
        count += 1
        if stored.seq != prev_seq + 1:
            problems.append(ChainProblem(
                stored.seq, f"sequence jumps from {prev_seq}: records removed or reordered"))
        if stored.prev_hash != prev_hash:
            problems.append(ChainProblem(
                stored.seq, "does not link to the record before it: "
                            "a record was removed, inserted or reordered"))
        expected = record_hash(stored.seq, stored.ts, stored.record, stored.detail_json,
                               stored.prev_hash)
        if expected != stored.hash:
            problems.append(ChainProblem(stored.seq, "content does not match its hash: edited"))
        prev_hash = stored.hash
        prev_seq = stored.seq
    return count, problems
