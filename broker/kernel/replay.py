"""Replay a tool run from its audit, without touching the world.

The invocation's full arguments were stored beside its `tool.call` intent, and the code it
ran is named (language and hash) by its outcome record (an image's tools, which no record
registers, included; older records: the registration in the audit); each syscall it
made left an intent and an outcome with the full result. Replay runs the same code against a
host that checks every syscall against the recorded one (same name, same argument hash, same
order) and feeds back the recorded result or error. A person can re-examine what a tool did;
nothing is read, written or asked again.

Nothing replay reads is taken on trust: the stretch of the audit from the process's first
record to the anchored head must verify (links, hashes, every payload against the hash its
record carries, the code against its registered hash). Otherwise replay is `Tampered`, naming
the record, never a verdict.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from broker.errors import Conflict, NotFound, error_from_wire
from broker.kernel.audit_detail import UNKNOWN_SYSCALL, audit_name, requested_name
from broker.kernel.host_tools import FAMILY
from broker.store import SQLiteStore, StoredRecord, args_hash
from broker.store.audit import CLOSES, OPENS, WHOLE, WRAPS
from broker.store.audit_rows import seq_in
from broker.store.vouch import PAYLOAD_HASH, RESULT_HASH, Registrations, Tampered, unpack
from sandboxes.base import CallLimits

if TYPE_CHECKING:
    from broker.kernel.ports import ProcessTable, ToolRunner


@dataclass(frozen=True, slots=True)
class RecordedCall:
    syscall: str
    args_hash: str | None
    ok: bool
    value: Any = None
    code: str = ""
    message: str = ""
    requested: str | None = None  # for an `unknown` syscall: the name that was asked for


class Diverged(Conflict):
    """The replayed code asked for something the recording does not hold."""


class ReplayHost:
    """A `SyscallHost` that answers from the recording."""

    def __init__(self, pid: int, inv: int, tool: str, calls: list[RecordedCall]) -> None:
        self.pid = pid
        self.invocation_id = inv
        self.tool = tool
        self.authority = f"replay/{inv}"  # never shares a sandbox with a live authority
        self._calls = deque(calls)
        self.logs: list[tuple[str, str]] = []
        self.used = 0

    def syscall_now(self, name: str, args: Any) -> Any:
        return self._answer(name, audit_name(name), requested_name(name), args)

    async def host_tool(self, name: str, args: Any) -> Any:
        """A host tool's call, recorded under its own name: its recorded result, never the
        embedder's function run again."""
        return self._answer(name, FAMILY + name, None, args)

    def _answer(self, name: str, recorded_as: str, requested: str | None, args: Any) -> Any:
        if not self._calls:
            raise Diverged(f"replay: {name} was never made in the recorded run")
        expected = self._calls.popleft()
        self.used += 1
        same_name = expected.syscall == recorded_as and (
            expected.syscall != UNKNOWN_SYSCALL or expected.requested == requested)
        if not same_name or expected.args_hash != args_hash(args or {}):
            raise Diverged(f"replay diverged at syscall {self.used}: recorded "
                           f"{expected.syscall}, now {name} (or other arguments)")
        if expected.ok:
            return expected.value
        raise error_from_wire(expected.code, expected.message)

    async def syscall(self, name: str, args: Any) -> Any:
        return self.syscall_now(name, args)

    def is_blocking(self, name: str) -> bool:
        return False  # nothing waits in a replay: every answer is already known

    def log(self, level: str, text: str) -> None:
        self.logs.append((level, text))

    @property
    def unused(self) -> int:
        return len(self._calls)


def recorded_calls(store: SQLiteStore, inv: int) -> list[RecordedCall]:
    """The syscalls one invocation made, in order, with what each returned. A call that went
    on as further calls (a redirect hop: records that `follows` it) is one call, whose result
    is the last one's. A `follows` or `intent` that is not a seq (a database writer's, past
    the head of a chain brokers share) names no call."""
    calls: list[RecordedCall] = []
    intents: dict[int, tuple[str, str | None]] = {}
    made_by: dict[int, int] = {}  # intent seq -> index in `calls` of the call it belongs to

    def record(call: RecordedCall, follows: int | None, intent: int | None = None) -> None:
        index = made_by.get(follows) if follows is not None else None
        if index is None:
            index = len(calls)
            calls.append(call)
        else:  # the tool made one call: keep its name and arguments, take the later result
            first = calls[index]
            calls[index] = replace(call, syscall=first.syscall, args_hash=first.args_hash)
        if intent is not None:
            made_by[intent] = index

    for record_ in store.audit_records(after=inv - 1):
        r = record_.record
        if record_.seq == inv:  # the call's own: a builtin wrapper's read may be folded in it
            folded = r.detail.get(WRAPS) if r.phase == WHOLE else None
            if isinstance(folded, dict):
                calls.append(_ended(store, record_, folded.get("syscall"),
                                    folded.get("args_hash")))
            continue
        if r.inv != inv:
            continue
        follows = seq_in(r.detail, "follows")
        if r.phase in OPENS:
            intents[record_.seq] = (r.syscall, r.args_hash)
            if follows in made_by:
                made_by[record_.seq] = made_by[follows]
        elif r.phase in ("denied", "rejected"):
            record(RecordedCall(r.syscall, r.args_hash, False, **_failure(r.detail),
                                requested=r.detail.get("name")), follows)
        if r.phase in CLOSES:  # (a whole record is its own intent's outcome)
            intent = record_.seq if r.phase == WHOLE else seq_in(r.detail, "intent")
            syscall, ahash = intents.pop(intent, (r.syscall, r.args_hash))
            call = _ended(store, record_, syscall, ahash)
            if intent in made_by:  # a later hop's outcome: the result of the call it continues
                first = calls[made_by[intent]]
                calls[made_by[intent]] = replace(call, syscall=first.syscall,
                                                 args_hash=first.args_hash)
            else:
                record(call, None, intent)
    return calls


def _ended(store: SQLiteStore, stored: StoredRecord, syscall: Any, ahash: Any) -> RecordedCall:
    """Syscall `syscall` as the record `stored` tells how it ended: its result (the payload
    the record vouches for) or its error."""
    detail = stored.record.detail
    if detail.get("ok"):
        payload = store.vouched_payload(stored, RESULT_HASH)
        if payload is None:
            raise Conflict(f"replay: the result of {syscall} (record {stored.seq}) "
                           "was too large to keep")
        return RecordedCall(syscall, ahash, True, unpack(payload))
    return RecordedCall(syscall, ahash, False, **_failure(detail))


def _failure(detail: dict[str, Any]) -> dict[str, str]:
    """A failed call's error code and message as text (a record's detail holds whatever a
    database writer made it: a code not text is `CANCELLED`, as a missing one)."""
    code, message = detail.get("error"), detail.get("message")
    return {"code": code if isinstance(code, str) else "CANCELLED",
            "message": message if isinstance(message, str) else ""}


async def replay(store: SQLiteStore, tools: ToolRunner, table: ProcessTable,
                 inv: int) -> dict[str, Any]:
    """Run invocation `inv` again from the audit; compare with the recorded result."""
    intent = next(iter(store.audit_records(after=inv - 1, limit=1)), None)
    if (intent is None or intent.seq != inv or intent.record.syscall != "tool.call"
            or intent.record.phase not in OPENS):
        raise NotFound(f"no recorded tool invocation {inv}")
    pid = intent.record.pid
    assert pid is not None
    _check_chain(store, pid)
    raw = store.vouched_payload(intent, PAYLOAD_HASH)  # (a whole call's: its arguments)
    if raw is None:
        raise NotFound(f"no recorded tool invocation {inv}")
    call = unpack(raw)
    calls = recorded_calls(store, inv)
    host = ReplayHost(pid, inv, call["name"], calls)
    record = _outcome_record(store, inv)
    code = record.record.detail.get("code") if record is not None else None
    # The code the invocation's own outcome names (in the chain); a record from before
    # outcomes named it: the registration the chain holds, else the image's tool.
    spec = code if isinstance(code, dict) else _code_at(store, tools, table, pid, call["name"],
                                                        inv)
    outcome = _recorded_outcome(store, record)
    try:
        result = await tools.run_tool(call["name"], spec, call.get("args", {}), host,
                                      CallLimits())
        replayed: dict[str, Any] = {"ok": True, "value": result}
    except (Diverged, Tampered):
        raise
    except Exception as exc:  # the tool's own error is part of what is replayed
        code = getattr(exc, "code", type(exc).__name__)
        replayed = {"ok": False, "code": code, "message": str(exc)}
    return {
        "inv": inv,
        "pid": pid,
        "tool": call["name"],
        "syscalls": host.used,
        "unused": host.unused,
        "replayed": replayed,
        "recorded": outcome,
        "same": _same(replayed, outcome) and host.unused == 0,
        "logs": host.logs,
    }


def _check_chain(store: SQLiteStore, pid: int) -> None:
    """Everything replay reads lies between the process's first record and the head: that
    stretch must verify as `libos audit --verify` would (links and hashes up to the anchored
    head, payloads, tool sources, the process's stored registrations)."""
    first: StoredRecord | None = next(iter(store.audit_records(pid=pid, limit=1)), None)
    start = first.seq - 1 if first is not None else 0
    _, problems = store.audit_problems(after=start, pid=pid)
    if problems:
        raise Tampered(f"replay refused, the audit is not intact: {problems[0]}")


def _code_at(store: SQLiteStore, tools: ToolRunner, table: ProcessTable, pid: int,
             name: str, before: int) -> dict[str, Any]:
    """The code a tool name stood for in a process when `before` was called: the last
    registration before it (as the chain records it), else the process image's own tool.
    Its source is checked against that hash when the run loads it."""
    registered = Registrations()
    for record in store.audit_records(pid=pid):
        if record.seq >= before:
            break
        registered.see(record)
    reg = registered.current.get((pid, name))
    if reg is not None:
        return {"lang": reg.lang, "hash": reg.hash}
    spec = tools.image_tools(table.process(pid).image).get(name)
    if spec is None:
        raise NotFound(f"process {pid} had no tool {name!r}")
    return spec


def _outcome_record(store: SQLiteStore, inv: int) -> StoredRecord | None:
    """The record of invocation `inv`'s outcome: its own (a call written as one record),
    or the outcome naming it."""
    for record in store.audit_records(after=inv - 1):
        r = record.record
        if r.phase == WHOLE and record.seq == inv:
            return record
        if r.phase == "outcome" and seq_in(r.detail, "intent") == inv:
            return record
    return None


def _recorded_outcome(store: SQLiteStore, record: StoredRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    detail = record.record.detail
    if detail.get("ok"):
        payload = store.vouched_payload(record)
        value = unpack(payload) if payload is not None else detail.get("result")
        return {"ok": True, "value": value}
    return {"ok": False, "code": detail.get("error"), "message": detail.get("message")}


def _same(replayed: dict[str, Any], recorded: dict[str, Any] | None) -> bool:
    if recorded is None:
        return False
    if replayed["ok"] != recorded["ok"]:
        return False
    if replayed["ok"]:
        return json.dumps(replayed["value"], default=repr) == json.dumps(recorded["value"],
                                                                         default=repr)
    return replayed.get("code") == recorded.get("code")
