"""Kill points for the crash harness: SIGKILL the broker at an exact point of its work.

`LIBOS_KILL_AT=POINT:N` makes the broker that installs these kill itself (a real SIGKILL,
nothing flushed, nothing unwound) at the N-th time it reaches POINT. The points wrap the
store's own methods, so the broker under test runs its production code unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from broker.store import AuditRecord, SQLiteStore
from broker.store.audit import CLOSES

# POINT: (store method, when it fires: after the method returned / before it ran)
POINTS = (
    "receive.taken",       # a message is marked taken; the receive's outcome is not recorded
    "receive.outcome",     # the receive's ok outcome is recorded; the tool call's is not
    "event.seen",          # an event is marked seen; the wait's outcome is not recorded
    "event.outcome",       # the wait's ok outcome is recorded; the tool call's is not
    "spend",               # a one-shot use is spent with its intent; the write has not run
    "spend.outcome",       # the one-shot write's outcome is recorded; the step's is not
    "call.outcome",        # a step's tool call outcome is recorded; its checkpoint is not
    "checkpoint.pending",  # the checkpoint before a step is written; nothing has run
    "checkpoint.step",     # the checkpoint after a step (with its observation) is written
    "exec.intent",         # a proc.exec's intent is recorded; nothing is switched yet
    "exec.switched",       # the exec's one transaction (image, caps, tools, checkpoint) is in
    "exec.outcome",        # the exec's ok outcome is recorded; its step's is not
    "shift.write",         # a write to the shifter's log has a durable intent; it has not run
    "grouped",             # a record waits for its group commit: nothing it announces has
                           # run, nobody has seen its answer, and it is lost with the broker
)

# The log the crash agent's shifter (and the image it execs into) appends to.
SHIFT_LOG = "/log/shift/out.txt"

_seen: Counter[str] = Counter()


def _reach(point: str, target: tuple[str, int],
           first: Callable[[], Any] | None = None) -> None:
    _seen[point] += 1
    if (point, _seen[point]) == target:
        if first is not None:
            first()
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def _audit_point(record: AuditRecord, spend: Any) -> str | None:
    if spend is not None:
        return "spend"
    if record.syscall == "proc.exec" and record.phase == "intent":
        return "exec.intent"
    if record.syscall == "fs.write" and record.phase == "intent" and record.resource == SHIFT_LOG:
        return "shift.write"
    detail = record.detail
    if record.phase not in CLOSES or not detail.get("ok"):  # (a call written whole too)
        return None
    if record.syscall == "proc.receive" and detail.get("result") is not None:
        return "receive.outcome"
    if record.syscall == "proc.wait_event" and detail.get("result") is not None:
        return "event.outcome"
    if record.syscall == "fs.write" and record.resource == "/once/token":
        return "spend.outcome"
    if record.syscall == "tool.call" and record.inv is None:
        return "call.outcome"
    if record.syscall == "proc.exec":
        return "exec.outcome"
    return None


def install(spec: str | None = os.environ.get("LIBOS_KILL_AT")) -> None:
    if not spec:
        return
    point, _, n = spec.partition(":")
    if point not in POINTS:
        raise SystemExit(f"unknown kill point {point!r}")
    target = (point, int(n or 1))

    def wrap(name: str, point_of: Callable[..., str | None]) -> None:
        original = getattr(SQLiteStore, name)

        def wrapped(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            reached = point_of(result, *args, **kwargs)
            if reached is not None:
                # Group commit: a named point is reached once its record is on disk (its
                # effect waits for that too); "grouped" is the moment before.
                grouped = kwargs.get("defer") and reached != "grouped"
                _reach(reached, target, self.commit_deferred if grouped else None)
            return result

        setattr(SQLiteStore, name, wrapped)

    wrap("append_audit", lambda _, record, spend=None, **__: _audit_point(record, spend))
    wrap("append_audit", lambda _, record, defer=False, **__: "grouped" if defer else None)
    wrap("append_pair", lambda _, intent, outcome, payload=None, defer=False: (
        "grouped" if defer else None))
    # A tool call's record (whole, or its held intent chained), with the reads it held.
    wrap("append_call", lambda _, call, *__, **___: _audit_point(call, None))
    wrap("append_call", lambda _, call, *__, defer=False: "grouped" if defer else None)
    wrap("take_message", lambda taken, *_, **__: "receive.taken" if taken else None)
    wrap("take_event", lambda taken, *_, **__: "event.seen" if taken else None)
    wrap("switch_image", lambda *_, **__: "exec.switched")
    wrap("save_checkpoint", lambda _, pid, step, state, observation=None, **__: (
        "checkpoint.step" if observation is not None else
        "checkpoint.pending" if _state(state).get("pending") else None))


def _state(state: dict[str, Any] | str) -> dict[str, Any]:
    """A checkpoint's state as saved: a dict, or its JSON text (a step's, `checkpoint_text`)."""
    return json.loads(state) if isinstance(state, str) else state
