"""`libos pause`, `resume PID`, `kill` and `fork`: a request left in the store for the broker
that holds it, then its answer waited for. The broker writes what applying it gave, or the
typed error that refused it (a resume of a process that is not paused); the store answers one
that nobody will ever apply (its process ended, or never existed). Each request is signed with
the user's audit key (`broker.store.control_sig`): a broker applies no other."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from broker import render
from broker.errors import Conflict, NotFound, error_from_wire
from broker.lifecycle import LIVE, State
from broker.store import control_sig

if TYPE_CHECKING:
    from broker.store.keys import AuditKey

POLL = 0.05
# What becomes of a request no broker took yet (signed requests lapse: `control_sig.WINDOW`).
QUEUED = (f"no broker holds the store; applied if one opens within {control_sig.WINDOW:.0f} s,"
          " else refused as stale")


def control(store: Any, args: argparse.Namespace, console: Any, verb: str) -> int:
    """Pause, resume or kill `args.pid` (and what is below it); refused for an ended process
    (here, or by the broker), but a kill of live ones below it."""
    state = store.get_process(args.pid)["state"]  # (or NotFound)
    if state not in LIVE and not (verb == "kill" and store.live_below(args.pid)):
        raise Conflict(f"process {args.pid} has ended ({state})")
    request = store.add_control(verb, args.pid, signer=signer())
    # (A kill is applied before its process's task has ended it: its state is waited for.)
    answer = _answer(store, request, args.wait,
                     lambda answer: refused(answer) or _settled(store, verb, args.pid))
    if refused(answer):
        raise error_from_wire(str(answer["error"]), str(answer.get("message", "")))
    applied = answer is not None
    row = store.get_process(args.pid)
    if args.json:
        render.print_json({"pid": args.pid, "verb": verb, "applied": applied,
                           "state": row["state"]})
    else:
        note = ("" if applied else " (taken by a broker, which has not answered yet)"
                if store.control_done(request) else
                f" (queued: {QUEUED})")
        # (the state is a row anyone who writes the database may write: inert)
        console.print(render.inert(f"{verb} {args.pid}: {row['state']}{note}", None))
    return 0


def fork(store: Any, args: argparse.Namespace, console: Any) -> int:
    """Fork `args.pid` from a checkpoint (the latest unless one is named): the new pid."""
    store.get_process(args.pid)  # NotFound for an unknown pid
    if args.checkpoint is not None and store.logged_checkpoint(args.pid, args.checkpoint) is None:
        raise NotFound(f"process {args.pid} has no kept checkpoint {args.checkpoint} "
                       f"(see `libos checkpoints {args.pid}`)")
    request = store.add_control("fork", args.pid, {"checkpoint": args.checkpoint},
                                signer=signer())
    result = _answer(store, request, args.wait, lambda answer: True)
    if args.json:
        render.print_json({**(result if isinstance(result, dict) else {}), "source": args.pid,
                     "checkpoint": args.checkpoint, "applied": result is not None})
    elif result is None:
        console.print(f"fork {args.pid}: queued ({QUEUED})")
    else:  # (the row's text, which anyone who writes the database may write: inert)
        console.print(f"fork {args.pid}:", render.fork_outcome(result))
    return 2 if refused(result) else 0


def signer(what: str = "a control request") -> AuditKey:
    """This user's audit key, which signs `what`; none: a typed error, and nothing written."""
    from broker.store.keys import user_key  # (its command's import)

    return user_key(what)


def refused(answer: Any) -> bool:
    return isinstance(answer, dict) and "error" in answer


def _answer(store: Any, request: int, wait: float, enough: Callable[[Any], bool]) -> Any:
    """The request's answer once there is one and `enough(answer)`, or what there is after
    `wait` seconds (None: no broker took it). Kept once seen: done requests are trimmed."""
    deadline = time.monotonic() + wait
    answer = store.control_result(request)
    while not (answer is not None and enough(answer)) and time.monotonic() < deadline:
        time.sleep(POLL)
        answer = answer if answer is not None else store.control_result(request)
    return answer


def _settled(store: Any, verb: str, pid: int) -> bool:
    """The process's stored state shows what `verb` did (or that it ended anyway; a kill of
    one that had ended: nothing left live below it)."""
    state = store.get_process(pid)["state"]
    if state not in LIVE:
        return verb != "kill" or not store.live_below(pid)
    return {"pause": state == State.PAUSED, "resume": state != State.PAUSED}.get(verb, False)
