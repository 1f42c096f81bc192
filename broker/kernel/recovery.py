"""Checkpoints and crash recovery.

A process is checkpointed at every step boundary: before a step (with the action it is about
to take as `pending`) and after it (with the observation that ended it, in one transaction).
After a crash, `recover` finds what was cut off:

* every effect whose intent is in the audit without an outcome gets an `outcome unknown`
  record (and a mailbox receive cut off that way puts its message back);
* a process that was mid-step either runs that step again, when nothing it started can have
  touched the world (only idempotent syscalls, or none: e.g. it was waiting for a person),
  or is shown the step as `outcome unknown` — never silently repeated;
* live processes come back runnable (paused ones stay paused) and start again where their
  planner can be rebuilt.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from broker.errors import ERRORS
from broker.planner import CallTool, Exit, Observation, action_from_json
from broker.store import AuditRecord
from broker.store.vouch import Tampered, unpack
from broker.syscalls import TABLE

if TYPE_CHECKING:
    from broker.kernel.kernel import Kernel
    from broker.kernel.process import AgentProcess

RECOVERED_THROUGH = "recovered_through"
UNKNOWN = "outcome unknown: the broker stopped before this effect's outcome was recorded"


def action_to_json(action: CallTool | Exit) -> dict[str, Any]:
    if isinstance(action, Exit):
        return {"exit": action.code, "result": action.result}
    return {"tool": action.name, "args": action.args}


def observation_to_json(obs: Observation) -> dict[str, Any]:
    return {"step": obs.step, "action": action_to_json(obs.action) if obs.action else None,
            "result": obs.result, "error": obs.error}


def observation_from_json(row: dict[str, Any]) -> Observation:
    action = action_from_json(row["action"]) if row["action"] else None
    return Observation(row["step"], action, row["result"], row["error"])


def capture(proc: AgentProcess, pending: CallTool | None) -> dict[str, Any]:
    """What a checkpoint holds beside the stored history, caps and tools."""
    planner_state = getattr(proc.planner, "snapshot", None)
    return {
        "cwd": proc.cwd,
        "usage": proc.usage.to_json(),
        "pending": action_to_json(pending) if pending else None,
        "exit_request": list(proc.exit_request) if proc.exit_request else None,
        "pause_requested": proc.pause_requested,
        "planner": planner_state() if planner_state else None,
        "objects": f"proc/{proc.pid}",
    }


def restore(proc: AgentProcess, checkpoint: dict[str, Any] | None,
            history: list[dict[str, Any]]) -> None:
    proc.history = [observation_from_json(row) for row in history]
    if checkpoint is None:
        return
    state = checkpoint["state"]
    proc.cwd = state["cwd"]
    for key, value in state["usage"].items():
        setattr(proc.usage, key, value)
    proc.exit_request = tuple(state["exit_request"]) if state["exit_request"] else None
    proc.pause_requested = bool(state["pause_requested"])
    restore_planner = getattr(proc.planner, "restore", None)
    if restore_planner and state.get("planner") is not None:
        restore_planner(state["planner"])


def close_open_intents(kernel: Kernel) -> None:
    """Record `outcome unknown` for every intent that has no outcome, since the last
    recovery (or clean close); put back the messages that cut-off receives had taken."""
    store = kernel.store
    open_: dict[int, Any] = {}
    for row in store.audit_rows_after(int(store.meta(RECOVERED_THROUGH) or 0)):
        if row["phase"] == "intent":
            open_[row["seq"]] = row
        elif row["phase"] == "outcome":
            open_.pop(json.loads(row["detail"]).get("intent"), None)
    for seq, row in open_.items():
        store.append_audit(AuditRecord(
            phase="outcome", syscall=row["syscall"], pid=row["pid"], inv=row["inv"],
            tool=row["tool"], resource=row["resource"], args_hash=row["args_hash"],
            detail={"ok": False, "unknown": True, "intent": seq,
                    "error": "OUTCOME_UNKNOWN", "message": UNKNOWN}))
    receives = [seq for seq, row in open_.items() if row["syscall"] == "proc.receive"]
    if receives:
        store.untake_messages(receives)


def mark_recovered(kernel: Kernel) -> None:
    kernel.store.set_meta(RECOVERED_THROUGH, str(kernel.store.head_seq))


def settle_pending_step(kernel: Kernel, proc: AgentProcess,
                        state: dict[str, Any]) -> CallTool | None:
    """A step the crash interrupted. Returns the action to run again when nothing it did can
    have touched the world; otherwise shows the planner what is known (the step's recorded
    outcome, or `outcome unknown`) and returns None."""
    action = action_from_json(state["pending"])
    assert isinstance(action, CallTool)
    rows = [r for r in kernel.store.audit_rows_after(state.get("audit_from", 0))
            if r["pid"] == proc.pid]
    step = len(proc.history)
    observation = _recorded_outcome(kernel, rows, step, action)
    if observation is None:
        touched = sorted({r["syscall"] for r in rows if r["phase"] == "intent"
                          and r["syscall"] != "tool.call" and r["syscall"] in TABLE
                          and not TABLE[r["syscall"]].idempotent})
        if not touched:
            return action
        observation = Observation(step, action, error={
            "code": "CANCELLED", "message": f"{UNKNOWN} ({', '.join(touched)})"})
    proc.history.append(observation)
    kernel.store.save_checkpoint(proc.pid, step + 1, capture(proc, None),
                                 observation_to_json(observation))
    return None


def _vouched_result(kernel: Kernel, seq: int, detail: dict[str, Any]) -> Any:
    """An outcome's full result, if the chain vouches for it; else its chained summary (an
    edited payload is never fed to a planner; `libos audit --verify` reports it)."""
    stored = next(iter(kernel.store.audit_records(after=seq - 1, limit=1)))
    try:
        payload = kernel.store.vouched_payload(stored)
    except Tampered:
        payload = None
    return unpack(payload) if payload is not None else detail.get("result")


def _recorded_outcome(kernel: Kernel, rows: list[Any], step: int,
                      action: CallTool) -> Observation | None:
    """The step's own outcome, if the crash came after it was recorded (only the checkpoint
    that follows was lost)."""
    call = next((r for r in rows if r["syscall"] == "tool.call" and r["phase"] == "intent"
                 and r["inv"] is None), None)
    if call is None:
        return None
    for row in rows:
        if row["phase"] != "outcome" or row["seq"] <= call["seq"]:
            continue
        detail = json.loads(row["detail"])
        if detail.get("intent") != call["seq"] or detail.get("unknown"):
            continue
        if detail.get("ok"):
            return Observation(step, action, result=_vouched_result(kernel, row["seq"], detail))
        if detail.get("error") in ERRORS:
            return Observation(step, action, error={"code": detail["error"],
                                                    "message": detail.get("message", "")})
    return None
