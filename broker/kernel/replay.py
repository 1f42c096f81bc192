"""Replay a tool run from its audit, without touching the world.

The invocation's full arguments and code hash were stored beside its `tool.call` intent; each
syscall it made left an intent and an outcome with the full result. Replay runs the same code
against a host that checks every syscall against the recorded one (same name, same argument
hash, same order) and feeds back the recorded result or error. A person can re-examine what a
tool did; nothing is read, written or asked again.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from broker.errors import Conflict, NotFound, error_from_wire
from broker.store import args_hash
from sandboxes.base import CallLimits

if TYPE_CHECKING:
    from broker.kernel.kernel import Kernel


@dataclass(frozen=True, slots=True)
class RecordedCall:
    syscall: str
    args_hash: str | None
    ok: bool
    value: Any = None
    code: str = ""
    message: str = ""


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
        if not self._calls:
            raise Diverged(f"replay: {name} was never made in the recorded run")
        expected = self._calls.popleft()
        self.used += 1
        if expected.syscall != name or expected.args_hash != args_hash(args or {}):
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


def recorded_calls(kernel: Kernel, inv: int) -> list[RecordedCall]:
    """The syscalls one invocation made, in order, with what each returned."""
    calls: list[RecordedCall] = []
    intents: dict[int, tuple[str, str | None]] = {}
    for record in kernel.store.audit_records(after=inv):
        r = record.record
        if r.inv != inv:
            continue
        if r.phase == "intent":
            intents[record.seq] = (r.syscall, r.args_hash)
        elif r.phase in ("denied", "rejected"):
            calls.append(RecordedCall(r.syscall, r.args_hash, False, code=r.detail["error"],
                                      message=r.detail.get("message", "")))
        elif r.phase == "outcome":
            syscall, ahash = intents.pop(r.detail.get("intent"), (r.syscall, r.args_hash))
            if r.detail.get("ok"):
                payload = kernel.store.payload(record.seq)
                if payload is None:
                    raise Conflict(f"replay: the result of {syscall} (record {record.seq}) "
                                   "was too large to keep")
                if hashlib.sha256(payload).hexdigest() != r.detail.get("result_hash"):
                    raise Conflict(f"replay: the stored result of record {record.seq} does "
                                   "not match the hash its audit record vouches for")
                calls.append(RecordedCall(syscall, ahash, True, msgpack.unpackb(payload)))
            else:
                calls.append(RecordedCall(syscall, ahash, False,
                                          code=r.detail.get("error", "CANCELLED"),
                                          message=r.detail.get("message", "")))
    return calls


async def replay(kernel: Kernel, inv: int) -> dict[str, Any]:
    """Run invocation `inv` again from the audit; compare with the recorded result."""
    raw = kernel.store.payload(inv)
    intent = next(iter(kernel.store.audit_records(after=inv - 1, limit=1)), None)
    if raw is None or intent is None or intent.record.syscall != "tool.call":
        raise NotFound(f"no recorded tool invocation {inv}")
    call = msgpack.unpackb(raw)
    pid = intent.record.pid
    assert pid is not None
    calls = recorded_calls(kernel, inv)
    host = ReplayHost(pid, inv, call["name"], calls)
    spec = _code_at(kernel, pid, call["name"], inv)
    outcome = _recorded_outcome(kernel, inv)
    try:
        result = await kernel.run_tool(call["name"], spec, call.get("args", {}), host,
                                       CallLimits())
        replayed: dict[str, Any] = {"ok": True, "value": result}
    except Diverged:
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


def _code_at(kernel: Kernel, pid: int, name: str, before: int) -> dict[str, Any]:
    """The code a tool name stood for in a process when `before` was called: the last
    registration before it (from the audit), else the process image's own tool."""
    spec: dict[str, Any] | None = None
    for record in kernel.store.audit_records(pid=pid):
        if record.seq >= before:
            break
        r = record.record
        if r.phase == "outcome" and r.syscall == "tool.register" and r.detail.get("ok"):
            payload = kernel.store.payload(record.seq)
            registered = msgpack.unpackb(payload) if payload is not None else None
            if registered and registered.get("name") == name:
                spec = {"lang": registered["lang"], "hash": registered["hash"]}
    if spec is None:
        spec = kernel.process(pid).tools.get(name)
    if spec is None:
        raise NotFound(f"process {pid} had no tool {name!r}")
    return spec


def _recorded_outcome(kernel: Kernel, inv: int) -> dict[str, Any] | None:
    for record in kernel.store.audit_records(after=inv):
        detail = record.record.detail
        if record.record.phase == "outcome" and detail.get("intent") == inv:
            if detail.get("ok"):
                payload = kernel.store.payload(record.seq)
                value = msgpack.unpackb(payload) if payload is not None else detail["result"]
                return {"ok": True, "value": value}
            return {"ok": False, "code": detail.get("error"), "message": detail.get("message")}
    return None


def _same(replayed: dict[str, Any], recorded: dict[str, Any] | None) -> bool:
    if recorded is None:
        return False
    if replayed["ok"] != recorded["ok"]:
        return False
    if replayed["ok"]:
        return json.dumps(replayed["value"], default=repr) == json.dumps(recorded["value"],
                                                                         default=repr)
    return replayed.get("code") == recorded.get("code")
