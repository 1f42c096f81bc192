"""Checkpoints and crash recovery.

A process is checkpointed at every step boundary: before a step (with the action it is about
to take as `pending`) and after it (with the observation that ended it, in one transaction).
After a crash, `recover` finds what was cut off:

* every effect whose intent is in the audit without an outcome gets an `outcome unknown`
  record (and a receive or an event wait cut off that way puts back what it took);
* a process that was mid-step is handed the step's recorded outcome when there is one (the
  step's own, or the one syscall's of a builtin wrapper: a message taken is delivered, not
  taken again); otherwise what the step took from a queue goes back, and the step runs
  again when nothing it started can have touched the world (only idempotent syscalls, or
  none: e.g. it was waiting for a person), or is shown as `outcome unknown` — never
  silently repeated;
* live processes come back runnable (paused ones stay paused) and start again where their
  planner can be rebuilt; a process of an earlier run is read back from the store (`reload`)
  the first time it is looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.errors import LibosError, NotFound
from broker.kernel import delivery, step_record
from broker.kernel.audit_detail import pack_payload, summarize
from broker.kernel.cap_loading import known
from broker.kernel.checkpoint_text import observed_text, pending_text, state_text
from broker.kernel.end_result import loaded_end, row_state
from broker.kernel.history import History
from broker.kernel.label_floor import bound_label, join_label
from broker.kernel.process import AgentProcess
from broker.kernel.refused_images import end_refused
from broker.kernel.revived import Held, Revived, refuse_revived
from broker.lifecycle import LIVE, State
from broker.planner import CallTool, Exit, Observation
from broker.planner.base import action_as_recorded
from broker.store import SQLiteStore
from broker.store.audit_rows import closing, detail_of, seq_in
from broker.store.vouch import Tampered

if TYPE_CHECKING:
    from broker.kernel.ports import RecoveryNeeds

RECOVERED_THROUGH = "recovered_through"
KEEP = object()
_PACKS = (float, bool)
UNKNOWN = "outcome unknown: the broker stopped before this effect's outcome was recorded"


def action_to_json(action: CallTool | Exit) -> dict[str, Any]:
    if isinstance(action, Exit):
        return {"exit": action.code, "result": action.result}
    return {"tool": action.name, "args": action.args}


def observation_to_json(obs: Observation) -> dict[str, Any]:
    """An observation as stored: a result too big for an audit payload is kept as its
    summary (the planner saw it whole while it was in memory)."""
    result = obs.result
    # (A float, a bool or None always packs: not packed only to be thrown away.)
    if not (result is None or type(result) in _PACKS) and pack_payload(result) is None:
        result = summarize(result)
    return {"step": obs.step, "action": action_to_json(obs.action) if obs.action else None,
            "result": result, "error": obs.error}


def capture(proc: AgentProcess, pending: CallTool | None) -> dict[str, Any]:
    """What a checkpoint holds beside the stored history, caps, tools and conversation."""
    planner_state = getattr(proc.planner, "snapshot", None)
    return {
        "cwd": proc.cwd,
        "usage": proc.usage.to_json(),
        "pending": action_to_json(pending) if pending else None,
        "exit_request": list(proc.exit_request) if proc.exit_request else None,
        "pause_requested": proc.pause_requested,
        "planner": planner_state() if planner_state else None,
        "objects": f"proc/{proc.pid}",
        "image": [proc.image.name, proc.image.version],
        "history_from": proc.history_from,
        "labels": sorted(proc.label),
    }


def save(store: SQLiteStore, proc: AgentProcess, step: int, *,
         pending: CallTool | None = None, observation: Observation | None = None,
         planner: Any = KEEP, defer: bool = False) -> dict[str, Any]:
    """Checkpoint a process at a step boundary: before a step (with the action it is about
    to take, and where in the audit to look for what it did) or after it (with the
    observation that ended it). The planner's new conversation turns go in the same
    transaction, one row each. `planner` replaces the captured planner state. `defer`: the
    checkpoint is committed with the store's next write (the step's intent), not alone."""
    state = capture(proc, pending)
    if planner is not KEEP:
        state["planner"] = planner
    if pending is not None:
        state["audit_from"] = store.head_seq
    _write(store, proc, step, state, observation, defer)
    return state


def save_step(store: SQLiteStore, proc: AgentProcess, step: int, *,
              pending: CallTool | None = None, observation: Observation | None = None) -> None:
    """`save(..., defer=True)` for the scheduler's two checkpoints of a step, the state's
    text composed from what is kept of it (`checkpoint_text`) where it can be."""
    text = state_text(proc, None, store.head_seq, pending_text=pending_text(
        proc, pending, action_to_json(pending))) if pending is not None else state_text(
        proc, None, None)
    if text is None:
        save(store, proc, step, pending=pending, observation=observation, defer=True)
    else:
        _write(store, proc, step, text, observation, True)


def _write(store: SQLiteStore, proc: AgentProcess, step: int, state: dict[str, Any] | str,
           observation: Observation | None, defer: bool) -> None:
    journal = getattr(proc.planner, "journal", None)
    store.save_checkpoint(proc.pid, step, state,
                          observation_to_json(observation) if observation else None,
                          turns=journal() if journal else None, defer=defer,
                          action_text=observed_text(proc, observation) if observation else None)


def planner_state(store: SQLiteStore, pid: int,
                  checkpoint: dict[str, Any] | None = None) -> Any:
    """The planner state of a process's last checkpoint, its conversation read back from
    its rows (a model planner's snapshot counts its turns; the turns are stored apart)."""
    checkpoint = store.checkpoint(pid) if checkpoint is None else checkpoint
    state = checkpoint["state"].get("planner") if checkpoint else None
    if isinstance(state, dict) and isinstance(state.get("turns"), int):
        state = {**state, "turns": store.planner_turns(pid, state["turns"],
                                                       int(state.get("first", 1)))}
    return state


def restore(store: SQLiteStore, proc: AgentProcess,
            checkpoint: dict[str, Any] | None) -> None:
    """Back to a checkpoint: the stored history (read lazily), cwd, usage, requests and the
    planner's state (from `proc.pid`'s rows)."""
    proc.history = History(store, proc.pid, store.history_length(proc.pid))
    if checkpoint is None:
        return
    state = checkpoint["state"]
    proc.cwd = state.get("cwd", proc.cwd)  # (each field's type checked: `read_state`)
    for key, value in state.get("usage", {}).items():
        setattr(proc.usage, key, value)
    proc.exit_request = tuple(state["exit_request"]) if state.get("exit_request") else None
    proc.pause_requested = bool(state.get("pause_requested"))
    proc.history_from = int(state.get("history_from", 0))
    join_label(store, proc, frozenset(state.get("labels", ())))  # (it never shrinks)
    restore_planner = getattr(proc.planner, "restore", None)
    if restore_planner and state.get("planner") is not None:
        restore_planner(planner_state(store, proc.pid, checkpoint))


def close_open_intents(store: SQLiteStore, pid: int | None = None) -> None:
    """Record `outcome unknown` for every intent that has no outcome, since the last
    recovery (or clean close); first put back the messages and events that cut-off receives
    and waits had taken, and those taken inside a host's tool call whose answer was cut off
    (the host never got them; a planner's step is settled by `settle_pending_step`). Put
    back first: a crash in between leaves the intents open, to be settled again.

    The records are read a page at a time and only what is still open is kept (intents
    without an outcome, and the tool calls, with what they took, of top-level calls not
    yet answered): a long session before the crash costs reading, not memory.

    `pid`: only that process's, all of its records (one process taken over from another
    broker, whose other processes' intents may be in flight on their brokers)."""
    open_: dict[int, Any] = {}  # intents without an outcome so far
    roots: dict[int, int] = {}  # a tool call (an invocation) -> its open top-level call
    trees: dict[int, list[int]] = {}  # an open top-level call -> the tool calls inside it
    took: dict[int, list[Any]] = {}  # an open top-level call -> the takers' intents in it
    since = int(store.meta(RECOVERED_THROUGH) or 0) if pid is None else 0
    for row in store.audit_rows_after(since, pid):
        if row["phase"] == "intent":
            open_[row["seq"]] = row
            if row["syscall"] == "tool.call":
                root = row["seq"] if row["inv"] is None else roots.get(row["inv"])
                if root is not None:
                    roots[row["seq"]] = root
                    trees.setdefault(root, []).append(row["seq"])
            elif row["syscall"] in delivery.TAKERS and row["inv"] in roots:
                took.setdefault(roots[row["inv"]], []).append(row)
        elif row["phase"] == "outcome":
            intent = seq_in(detail_of(row["detail"]), "intent")
            open_.pop(intent, None)
            for call in trees.pop(intent, ()):
                roots.pop(call, None)  # answered: it and everything in it are settled
            took.pop(intent, None)
    steps: dict[int, int | None] = {}
    cut_off = [root for root in trees if root in open_
               and root != step_record.step_call_of(store, open_[root]["pid"], steps)]
    delivery.put_back(store, [*open_.values(),
                              *(r for root in cut_off for r in took.get(root, ()))])
    for seq, row in open_.items():
        store.append_audit(closing(row, {"ok": False, "unknown": True, "intent": seq,
                                         "error": "OUTCOME_UNKNOWN", "message": UNKNOWN}))


def mark_recovered(store: SQLiteStore) -> None:
    store.set_meta(RECOVERED_THROUGH, str(store.head_seq))


def settle_pending_step(store: SQLiteStore, proc: AgentProcess,
                        state: dict[str, Any]) -> CallTool | None:
    """A step the crash interrupted. Idempotence is judged per syscall with its recorded
    outcome: a recorded ok outcome (the step's own, or that of the one syscall a builtin
    wrapper makes) is handed to the planner, not run again. Otherwise whatever the step took
    from a queue is put back, and the step runs again when nothing it did can have touched
    the world; else the planner is shown `outcome unknown`. Returns the action to run
    again, or None."""
    action = action_as_recorded(state["pending"])  # (as the planner chose it: checked again)
    if not isinstance(action, CallTool):
        return None  # (a state edited behind the broker's back: no step known to settle)
    rows = list(store.audit_rows_after(state.get("audit_from", 0), proc.pid))
    step = len(proc.history)
    call = step_record.step_call(rows)
    # What the step's call made (its own outcome is the one top-level outcome read below):
    # a host's call beside it is settled on its own (cut off, by `close_open_intents`;
    # answered, it keeps what it took).
    tree = step_record.call_tree(rows, {call["seq"]}) if call is not None else set()
    inside = [r for r in rows if r["inv"] in tree]
    observation = None
    if call is not None:
        observation = (step_record.recorded_outcome(store, rows, call, step, action)
                       or step_record.wrapped_outcome(store, proc, inside, call, step, action))
    if observation is None:
        rows = inside
        delivery.put_back(store, rows)
        touched = sorted({r["syscall"] for r in rows if step_record.may_have_acted(r)})
        if not touched:
            return action
        observation = Observation(step, action, error={
            "code": "CANCELLED", "message": f"{UNKNOWN} ({', '.join(touched)})"})
    asked = step_record.asked_exit(inside)
    if asked is not None:  # (the checkpoint that kept it after the step was lost)
        proc.exit_request = asked
    proc.history.append(observation)
    # The planner is not rebuilt yet: its state is the one the step started from.
    save(store, proc, step + 1, observation=observation, planner=state.get("planner"))
    return None


def reload(kernel: RecoveryNeeds, pid: Any) -> AgentProcess:
    """A process from an earlier run of the broker, back in the table without a planner
    (its planner lived in the process that ran it)."""
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise NotFound(f"no process {pid!r}")
    row = kernel.store.get_process(pid)
    state = row_state(pid, row["state"])
    refuse_revived(kernel.store, pid, state)  # (its end on the record: ended again)
    image = kernel.images.image(row["image"], row["version"])
    # An ended one's capabilities as the store has them (the registry keeps only those of
    # live processes, and what they derive from: `broker.caps.registry`).
    caps = (kernel.caps.table(pid) if state in LIVE else
            kernel.caps.held_again(pid, kernel.store.load_capabilities(owner=pid)))
    forged, exit_code, result = loaded_end(kernel.store, pid, state, row)
    proc = AgentProcess(pid, _parent(pid, row["parent"]), image, caps, root=row["root"],
                        cwd=row["cwd"],
                        state=state, reason=row["reason"], forged=forged, exit_code=exit_code,
                        result=result, started_at=row["created"],
                        label=bound_label(kernel.store, pid, frozenset(row["labels"])))
    proc.tools = {**kernel.tools.image_tools(image), **kernel.store.process_tools(pid)}
    proc.children = kernel.store.children_of(pid)
    restore(kernel.store, proc, kernel.store.checkpoint(pid))
    if state not in LIVE:  # its usage as its end stored it (its last checkpoint may be older)
        for key, value in (row["usage"] or {}).items():
            setattr(proc.usage, key, value)
    if state == State.CREATED:
        # Its spawn never finished (a spawn's last write makes it runnable): a crash in it, or
        # a spawn whose grants failed (its end deferred, lost with the crash). Whoever asked
        # for it was told it failed, or never told: it does not come back.
        proc.state, proc.reason = State.KILLED, "its spawn was not stored"
        # (No result: one in its row is a writer's, and its end binds the row's: red team 14.)
        kernel.store.update_process(pid, state=State.KILLED, reason=proc.reason, result=None)
    elif state in (State.RUNNING, State.WAITING):
        # It was mid-step when that broker stopped; it is runnable again, not running.
        proc.state = State.RUNNABLE
        kernel.store.update_process(pid, state=State.RUNNABLE, reason="reloaded")
    kernel.holds.restore(proc)
    if not proc.alive:
        proc.done.set()
    kernel.admit(proc)
    if proc.alive:
        _ancestors_loaded(kernel, proc.parent)
        kernel.lineage.born(proc)  # counted below its ancestors again
    return proc


_ENDED = frozenset({State.EXITED.value, State.KILLED.value})


def _parent(pid: int, parent: Any) -> int | None:
    """A row's parent pointer as the table may follow it: a parent is always made before its
    child (a smaller pid), so one that is not is a writer's, and is not followed: a cycle of
    them (an ended ancestor's pointing back at its live descendant, loaded again by
    `_ancestors_loaded`) made every walk up the table (`LiveDescendants`, `Budgets.charge`)
    spin forever in `Kernel.open` (red team 45). Not followed is what a writer who clears the
    pointer gets already."""
    return parent if type(parent) is int and parent < pid else None


def _ancestors_loaded(kernel: RecoveryNeeds, parent: int | None) -> None:
    """A live process's ancestors back in the table, ended ones too: budgets and the
    live-descendant bound are walked up through the table (`Budgets.charge`,
    `LiveDescendants`), so a grandchild whose parent ended before a restart escaped its
    grandparent's budget and bound (red team rskern). A live one not in the table (another
    broker's: loading it would take its lease), or one the store or chain refuses, ends the
    walk (as before: not counted here)."""
    while parent is not None and kernel.loaded(parent) is None:
        try:
            if kernel.store.get_process(parent)["state"] not in _ENDED:
                return
            parent = kernel.process(parent).parent
        except LibosError:
            return


def resume(kernel: RecoveryNeeds, pid: int) -> AgentProcess:
    """One live process taken over from another broker (its lease now this broker's): what
    was cut off is settled as after a crash, and it starts again where its planner can be
    rebuilt."""
    close_open_intents(kernel.store, pid)
    for handle, cap in kernel.store.load_capabilities(live=True):
        if cap.owner == pid or not known(kernel.caps, cap.id):
            kernel.caps.load(cap, handle)  # its own as they are now; the others' if new here
    proc = _reload_or_end(kernel, pid)
    checkpoint = kernel.store.checkpoint(pid)
    if checkpoint is not None and checkpoint["state"].get("pending") is not None:
        proc.rerun = settle_pending_step(kernel.store, proc, checkpoint["state"])
    kernel.controls.apply()  # a pause asked for while nobody ran it holds before a step
    proc.planner = kernel.spawner.planner_for(proc.image, pid)
    if proc.planner is not None and proc.alive:
        kernel.scheduler.start(proc)
    return proc


def _reload_or_end(kernel: RecoveryNeeds, pid: int) -> AgentProcess:
    """`reload`; a process whose image the chain does not vouch for is not run: ended and
    recorded as the open's recovery ends it (`end_refused`), its capabilities let go, and
    `Tampered` raised to the taker (which goes on with the next)."""
    try:
        return reload(kernel, pid)
    except Tampered as exc:
        if not isinstance(exc, (Revived, Held)):  # (ended and recorded already; held: not
            # ended, on purpose)
            end_refused(kernel.store, [(pid, exc.message)])
        kernel.caps.release([pid])
        raise


def recover(kernel: RecoveryNeeds) -> None:
    """After a crash (or a clean close): settle what was cut off, then start every live
    process again where its planner can be rebuilt."""
    close_open_intents(kernel.store)
    resumed, refused = [], []
    for pid in kernel.store.live_pids():  # (not every process the store ever held)
        if kernel.loaded(pid) is not None:
            continue
        try:
            proc = kernel.process(pid)  # back from the store, without a planner
        except (Revived, Held):  # its end on the record: ended again (and recorded) as it
            continue  # loaded; or held for an unsigned end (shared): not run, not ended
        except Tampered as exc:  # its image: not run, ended (and recorded) below
            refused.append((pid, exc.message))
            continue
        checkpoint = kernel.store.checkpoint(proc.pid)
        pending = checkpoint["state"].get("pending") if checkpoint else None
        if pending is not None:
            proc.rerun = settle_pending_step(kernel.store, proc, checkpoint["state"])
        resumed.append(proc)
    end_refused(kernel.store, refused)
    kernel.controls.apply()  # a pause asked for while no broker ran holds before a step
    # The capabilities of ended processes loaded for a revocation's sake (what live ones
    # derive from) go once nothing derives from them any more, as if they had been reaped.
    kernel.caps.release([pid for pid in kernel.caps.owners() if kernel.loaded(pid) is None])
    for proc in resumed:
        proc.planner = kernel.spawner.planner_for(proc.image, proc.pid)
        if proc.planner is not None and proc.alive:
            kernel.scheduler.start(proc)
    mark_recovered(kernel.store)
