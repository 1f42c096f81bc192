"""What a process's pending step did, as the audit records it since the step's checkpoint:
its own call (never a host's made beside it), what that call made, and how it ended (its
recorded outcome, or that of the one syscall a builtin wrapper makes). Read by recovery
(`recovery.settle_pending_step`, `close_open_intents`) and by approvals (which requests a
step run again may take up).
"""

from __future__ import annotations

from typing import Any

from broker.errors import ERRORS
from broker.kernel import delivery
from broker.kernel.audit_detail import HOST_CALL
from broker.kernel.builtin_tools import BUILTINS
from broker.kernel.host_tools import FAMILY
from broker.kernel.process import AgentProcess
from broker.planner import CallTool, Observation
from broker.store import SQLiteStore
from broker.store.audit import OPENS, WHOLE
from broker.store.audit_rows import detail_of, seq_in
from broker.store.vouch import TAKEN_BACK, Tampered, unpack
from broker.syscalls import TABLE


def call_tree(rows: list[Any], calls: set[int]) -> set[int]:
    """`calls` and every tool call made inside them (audit rows in order: a nested call's
    invocation joins its caller's)."""
    tree = set(calls)
    for row in rows:
        if row["inv"] in tree and row["syscall"] == "tool.call" and row["phase"] in OPENS:
            tree.add(row["seq"])
    return tree


def step_call(rows: list[Any]) -> Any:
    """The pending step's own tool call among its process's rows since the checkpoint: the
    first top-level one a host did not make (the step writes it before anything can run
    beside it). A host's calls (an MCP client's, `HOST_CALL` in their intent) are settled on
    their own: made after a step that wrote no call (it runs again), one is not the step's."""
    return next((r for r in rows if r["syscall"] == "tool.call" and r["phase"] in OPENS
                 and r["inv"] is None and detail_of(r["detail"]).get(HOST_CALL) is not True),
                None)


def step_invocations(store: SQLiteStore, pid: int) -> set[int]:
    """The invocations (tool calls) of process `pid`'s pending step, if it was mid-step:
    what recovery may run again, and so what may take up a request it filed."""
    checkpoint = store.checkpoint(pid)
    state = checkpoint["state"] if checkpoint else {}
    if not state.get("pending"):
        return set()
    rows = list(store.audit_rows_after(state.get("audit_from", 0), pid))
    call = step_call(rows)
    return call_tree(rows, {call["seq"]}) if call is not None else set()


def step_call_of(store: SQLiteStore, pid: int | None, cache: dict[int, int | None]
                 ) -> int | None:
    """The seq of process `pid`'s pending step's own call, if it was mid-step."""
    if pid is None:
        return None
    if pid not in cache:
        checkpoint = store.checkpoint(pid)
        state = checkpoint["state"] if checkpoint else {}
        call = None
        if state.get("pending"):
            call = step_call(list(store.audit_rows_after(state.get("audit_from", 0), pid)))
        cache[pid] = call["seq"] if call is not None else None
    return cache[pid]


def asked_exit(rows: list[Any]) -> tuple[int, Any] | None:
    """The end a call of the step asked for (`proc.exit`, its ok outcome recorded): it
    stands, as the call was told. (One whose code is not a number, a database writer's,
    asks for none.)"""
    for row in rows:
        if row["phase"] == "intent" and row["syscall"] == "proc.exit":
            outcome = _outcome_of(rows, row)
            if outcome is not None and outcome.get("ok"):
                args = detail_of(row["detail"]).get("args")
                code = args.get("code", 0) if isinstance(args, dict) else None
                if type(code) is int:
                    return code, args.get("result")  # type: ignore[union-attr]
    return None


def may_have_acted(row: Any) -> bool:
    """An intent whose effect may have happened: a syscall that is not idempotent, or a host
    tool not marked read-only (its intent says so). A syscall not of text is none the broker
    names (a database writer's bytes, in SQLite's untyped column), as one not in the table."""
    syscall = row["syscall"]
    if row["phase"] != "intent" or type(syscall) is not str or syscall == "tool.call":
        return False
    if syscall.startswith(FAMILY):
        return not detail_of(row["detail"]).get("read_only")
    return syscall in TABLE and not TABLE[syscall].idempotent


def _vouched_payload(store: SQLiteStore, seq: int) -> bytes | None:
    """An outcome's stored full result, if the chain vouches for it (an edited payload is
    never fed to a planner; `libos audit --verify` reports it)."""
    stored = next(iter(store.audit_records(after=seq - 1, limit=1)))
    try:
        return store.vouched_payload(stored)
    except Tampered:
        return None


def _outcome_of(rows: list[Any], intent: Any) -> dict[str, Any] | None:
    """The recorded (known) outcome detail of an intent, if the crash came after it (a whole
    record's: its own)."""
    if intent["phase"] == WHOLE:
        return {**detail_of(intent["detail"]), "seq": intent["seq"]}
    found = None  # the first; unless a later one took it back (a registration: `TAKEN_BACK`)
    for row in rows:
        if row["phase"] != "outcome" or row["seq"] <= intent["seq"]:
            continue
        detail = detail_of(row["detail"])
        if seq_in(detail, "intent") == intent["seq"] and not detail.get("unknown"):
            if detail.get(TAKEN_BACK) is True:
                return {**detail, "seq": row["seq"]}
            found = found or {**detail, "seq": row["seq"]}
    return found


def _observed(store: SQLiteStore, detail: dict[str, Any], step: int, action: CallTool,
              result: Any = None) -> Observation | None:
    if detail.get("ok"):
        if result is None:
            payload = _vouched_payload(store, detail["seq"])
            result = unpack(payload) if payload is not None else detail.get("result")
        return Observation(step, action, result=result)
    code, message = detail.get("error"), detail.get("message")
    if isinstance(code, str) and code in ERRORS:  # (a writer's may be of any type)
        return Observation(step, action, error={
            "code": code, "message": message if isinstance(message, str) else ""})
    return None


def recorded_outcome(store: SQLiteStore, rows: list[Any], call: Any, step: int,
                      action: CallTool) -> Observation | None:
    """The step's own outcome, if the crash came after it was recorded (only the checkpoint
    that follows was lost)."""
    detail = _outcome_of(rows, call)
    return _observed(store, detail, step, action) if detail else None


def wrapped_outcome(store: SQLiteStore, proc: AgentProcess, rows: list[Any], call: Any,
                     step: int, action: CallTool) -> Observation | None:
    """A builtin wrapper's result is its one syscall's: when that syscall's outcome was
    recorded (a message taken, an event seen, a file written) it is the step's result."""
    spec = proc.tools.get(action.name) if isinstance(action.name, str) else None  # (CallTool([]))
    lang = spec["lang"] if spec else None
    builtin = BUILTINS.get(action.name) if lang == "builtin" else None
    syscall = FAMILY + action.name if lang == "host" else builtin.syscall if builtin else None
    if syscall is None:
        return None
    inner = [r for r in rows if r["phase"] in OPENS and r["inv"] == call["seq"]]
    if len(inner) != 1 or inner[0]["syscall"] != syscall:
        return None
    detail = _outcome_of(rows, inner[0])
    if detail is None:
        return None
    if detail.get("ok") and syscall in delivery.TAKERS:
        # Exactly what it took, from the queue itself (the payload may have been too big).
        result = delivery.taken(store, syscall, inner[0]["seq"])
        return Observation(step, action, result=result)
    if (detail.get("ok") and _vouched_payload(store, detail["seq"]) is None
            and ((syscall in TABLE and TABLE[syscall].idempotent)
                 or detail_of(inner[0]["detail"]).get("read_only"))):
        return None  # only a summary was kept, and running it again is safe
    return _observed(store, detail, step, action)
