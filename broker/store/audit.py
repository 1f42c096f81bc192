"""The audit chain: each record's hash covers its content and the hash of the one before.

Editing a record breaks its own hash; removing, inserting or reordering records breaks the
link (`prev_hash`) or the sequence of the record after. `verify_chain` names the first
record where each break shows.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from broker.json_text import encoder

GENESIS = "0" * 64

# What a record's `syscall` field may hold besides a name from the syscall table. A call to a
# name the table does not have is recorded as `unknown` (the name asked for, bounded and
# inert, is in its detail), so tool code can never name a record.
UNKNOWN_SYSCALL = "unknown"
# The broker's own administrative records: written only by broker code (never dispatched for
# a process), with phase `admin` (or `rejected`, for a refused answer). Verification honours
# only these, and only in the shape the broker writes them (see `is_broker_anchor`).
ANCHOR_RECORD = "audit.anchor"
KEY_RECORD = "audit.key"  # the chain's signing key was replaced: the old key's endorsement
ELICIT_RECORD = "approval.elicit"  # what came of putting a request to an MCP client's user
# A control request (`libos pause`...) a broker took: applied (`admin`, its nonce spent) or
# refused (`rejected`, and why): `broker.kernel.control_requests`.
CONTROL_RECORD = "control.request"
# The host's own acts through the embedding API (see `broker.kernel.host_acts`).
HOST_ACTS = frozenset({"host.spawn", "host.fork", "host.image", "host.exit", "host.obj.put",
                       "host.obj.get", "host.fs.write", "host.fs.read"})
ADMIN_SYSCALLS = frozenset({ANCHOR_RECORD, KEY_RECORD, "approval.answer", ELICIT_RECORD,
                            CONTROL_RECORD,
                            "caps.revoke", "caps.narrow", *HOST_ACTS,
                            # a process's end (`broker.store.ends`), a shared chain's
                            # signing marker and note (`broker.store.recordsig`)
                            "proc.end", "audit.signed", "caps.unsigned"})


# A call's records: its intent (before the effect), its outcome (after), or both in one
# record (`WHOLE`) for a call whose intent waited for its outcome (a read that changes
# nothing: `broker.kernel.read_commit`). A whole record is the call's intent (its seq is the
# call's id) and its outcome (no `intent` key: it is its own); its detail holds the intent's
# `args` (and `args_labels`, the labels of the data the call carried) beside the outcome's.
# Its hash is made as every record's: the list hashed did not change, only a phase was added,
# so chains written before verify as they did, and each kind of tampering shows as before.
INTENT, OUTCOME, WHOLE = "intent", "outcome", "intent+outcome"
OPENS = frozenset({INTENT, WHOLE})  # a record that begins a call (its seq names the call)
CLOSES = frozenset({OUTCOME, WHOLE})  # a record that tells how a call ended
# In a whole `tool.call` record of a builtin that is exactly one read (`ToolPlan.wraps`): that
# read, folded into the call's record instead of a record of its own (`broker.kernel.held_call`).
# It holds what only the read's record said (`syscall`, `resource`, `cap_id`, `args_hash`, and
# `labels` when the read's record had them); its arguments are the call's `args`, its result
# and its payload the call's.
WRAPS = "wraps"
# What tells how a call ended, in an outcome's detail (`broker.store.vouch`'s hash names too).
RESULT_KEYS = ("ok", "result", "result_hash", "error", "message")


def _canonical_other(value: Any) -> str:
    """A value JSON has no form for, as its repr; a memoryview as the bytes it views (its own
    repr names its address: a request of one was never found to give its args_hash again,
    its arguments stored as those bytes: red team 35)."""
    if isinstance(value, memoryview):  # (released: ValueError, the arguments refused typed;
        return repr(value.tobytes())  # its repr named its address, red team 40)
    return repr(value)


# Built once: `json.dumps` with options builds an encoder per call, a few µs of every record.
_CANONICAL = encoder(sort_keys=True, default=_canonical_other)


def canonical_json(value: Any) -> str:
    return _CANONICAL(value)


def args_hash(args: Any) -> str:
    """The hash that binds an approval (and an audit record) to exact arguments."""
    if type(args) is dict and not args:
        return _NO_ARGS_HASH  # (most calls without arguments: the clock, listings)
    return hashlib.sha256(canonical_json(args).encode()).hexdigest()


def args_hash_sized(args: Any) -> tuple[str, int]:
    """`args_hash(args)`, and the length of the canonical JSON it hashed: every string,
    byte and item of the arguments shows in it, so it bounds what packing them costs (the
    dispatcher then need not walk them to see that they are small: `pack_payload`)."""
    if type(args) is dict and not args:
        return _NO_ARGS_HASH, 2
    text = canonical_json(args)
    return hashlib.sha256(text.encode()).hexdigest(), len(text)


_NO_ARGS_HASH = hashlib.sha256(canonical_json({}).encode()).hexdigest()


# Not frozen: a frozen dataclass's __init__ sets each field through object.__setattr__, five
# times the cost, and a call writes several records. (Its detail, a dict, was never frozen.)
@dataclass(slots=True)
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


def merged(intent: AuditRecord, outcome: dict[str, Any]) -> AuditRecord:
    """An intent and its outcome's detail as one record (phase `WHOLE`), made of the intent
    (changed in place: the caller's alone): its fields (its capability too), its `args`
    first, the labels of the data it carried as `args_labels` (`labels` is the result's, as
    in an outcome), then the outcome's detail without `intent` (the record is its own)."""
    detail = intent.detail
    carried = detail.pop("labels", None)
    if carried is not None:
        detail["args_labels"] = carried
    if "intent" in detail:  # (never the kernel's: an intent's detail names no intent)
        for key, value in outcome.items():
            if key != "intent":
                detail[key] = value
    else:  # the same, in C: two records of every builtin call are merged
        detail.update(outcome)
        detail.pop("intent", None)
    intent.phase = WHOLE
    return intent


def as_listed(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A record (`StoredRecord.to_json`) as the lines a listing shows people: one, or for a
    builtin wrapper's call with its read folded in (`WRAPS`) two, the read on a line of its
    own as its record said before it was folded: its seq, hash and time are the call's (one
    record holds both), its `inv` the call's seq, and `folded` says so."""
    detail = record["detail"]
    read = detail.get(WRAPS) if record["phase"] == WHOLE else None
    if not isinstance(read, dict):
        return [record]
    call = detail.get("args") if isinstance(detail.get("args"), dict) else {}
    said = {"args": call.get("args", {})}
    for key in ("args_labels", *RESULT_KEYS, "labels"):
        value = read.get(key) if key.endswith("labels") else detail.get(key)
        if value is not None:
            said[key] = value
    return [record, {**record, "inv": record["seq"], "tool": call.get("name"),
                     "syscall": read.get("syscall"), "resource": read.get("resource"),
                     "args_hash": read.get("args_hash"), "cap_id": read.get("cap_id"),
                     "detail": said, "folded": True}]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    seq: int
    ts: float
    record: AuditRecord
    detail_json: str
    prev_hash: str
    hash: str
    # Shared mode: the writer's signature over a vouching record (`broker.store.recordsig`),
    # read where it is checked; outside the hash (it signs the hash).
    sig: str | None = None

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
            "detail": r.detail,
            "hash": self.hash,
        }


# What an integer column (a pid; SQLite INTEGER, PostgreSQL BIGINT) holds.
INT64 = range(-(1 << 63), 1 << 63)


def storable_pid(pid: Any) -> int | None:
    """A pid a host named, as a record keeps it: None unless an int a store can hold (one past
    64 bits would fail the record, untyped, in place of the act's own error)."""
    return pid if type(pid) is int and pid in INT64 else None


def record_hash(seq: int, ts: float, record: AuditRecord, detail_json: str, prev: str,
                misfit: Callable[[AuditRecord], None] | None = None) -> str:
    """sha256 of the record as canonical JSON: the list [seq, ts, pid, inv, tool, phase,
    syscall, resource, args_hash, cap_id, detail, prev], written field by field as
    `canonical_json` writes it (without building an encoder for each record). `misfit(record)`
    for a record not of the shape the broker writes (a chain refuses one no store holds as it
    is hashed: its check costs nothing for the others)."""
    global _last_ts
    r = record
    pid, inv, tool, resource, ahash, cap = r.pid, r.inv, r.tool, r.resource, r.args_hash, r.cap_id
    if (type(seq) is int and type(ts) is float and _isfinite(ts) and type(r.phase) is str
            and type(r.syscall) is str and type(detail_json) is str and type(prev) is str
            and (pid is None or (type(pid) is int and pid in INT64))
            and (inv is None or (type(inv) is int and inv in INT64))
            and (tool is None or type(tool) is str)
            and (resource is None or type(resource) is str)
            and (ahash is None or type(ahash) is str) and (cap is None or type(cap) is str)):
        # Every field of the shape the broker writes: the same text as `_field` gives each,
        # without a call per field (two records per tool call).
        last = _last_ts
        if ts is last[0]:
            time_text = last[1]  # (the records of one commit share their time)
        else:
            time_text = float.__repr__(ts)
            _last_ts = (ts, time_text)
        body = (f"[{int.__repr__(seq)},{time_text},"
                f"{'null' if pid is None else int.__repr__(pid)},"
                f"{'null' if inv is None else int.__repr__(inv)},"
                f"{'null' if tool is None else _STRING(tool)},{_STRING(r.phase)},"
                f"{_STRING(r.syscall)},{'null' if resource is None else _STRING(resource)},"
                f"{'null' if ahash is None else _STRING(ahash)},"
                f"{'null' if cap is None else _STRING(cap)},{_STRING(detail_json)},"
                f"{_STRING(prev)}]")
    else:
        if misfit is not None:
            misfit(record)
        body = "[" + ",".join(map(_field, (seq, ts, pid, inv, tool, r.phase, r.syscall,
                                           resource, ahash, cap, detail_json, prev))) + "]"
    return hashlib.sha256(body.encode()).hexdigest()


_STRING = json.encoder.encode_basestring  # a str as the canonical encoder writes it
_isfinite = math.isfinite
# The time last hashed, and its text: a float's shortest repr costs more than all the other
# fields but the detail, and an intent written with its outcome has their time (the same
# object: `is` tells it, never a float merely equal).
_last_ts: tuple[float | None, str] = (None, "")


def _field(value: Any) -> str:
    """One field of `record_hash`'s list, exactly as `canonical_json` writes it."""
    kind = type(value)
    if kind is str:
        return _STRING(value)
    if value is None:
        return "null"
    if kind is int:
        return int.__repr__(value)
    if kind is float and math.isfinite(value):
        return float.__repr__(value)
    return canonical_json(value)  # anything else (a stored record may hold anything)


@dataclass(frozen=True, slots=True)
class ChainProblem:
    seq: int
    what: str

    def __str__(self) -> str:
        return f"record {self.seq}: {self.what}"


def is_intact(stored: StoredRecord) -> bool:
    """The record's content matches its own hash (it says nothing of its place in the chain)."""
    return record_hash(stored.seq, stored.ts, stored.record, stored.detail_json,
                       stored.prev_hash) == stored.hash


def is_broker_anchor(stored: StoredRecord, syscall: str = ANCHOR_RECORD) -> bool:
    """An `audit.anchor` record (or another administrative record of the chain's own, such
    as `audit.key`) as only the broker writes it: phase `admin`, claimed by no process,
    invocation or tool, and intact."""
    r = stored.record
    return (r.phase == "admin" and r.syscall == syscall and r.pid is None
            and r.inv is None and r.tool is None and is_intact(stored))


def verify_chain(records: Iterable[StoredRecord], *, after: tuple[int, str] = (0, GENESIS)
                 ) -> tuple[int, list[ChainProblem]]:
    """Walk the chain in stored order, from the record after `after` (its seq and hash).
    Returns (records checked, problems)."""
    problems: list[ChainProblem] = []
    prev_seq, prev_hash = after
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
