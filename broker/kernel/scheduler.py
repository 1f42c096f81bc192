"""The scheduler: one trio task per running process, asking its planner for the next action,
running it as a `tool.call` through the dispatcher, and checkpointing at every step boundary,
where pauses, exit requests and budgets are honoured."""

from __future__ import annotations

import contextvars
import logging
import sqlite3
from typing import TYPE_CHECKING

import trio

from broker.errors import Conflict, LibosError, LimitExceeded
from broker.kernel import recovery, too_deep, young_gc
from broker.kernel.faults import StoreGaveUp, until_end_stored
from broker.kernel.held_call import chain_held_calls
from broker.lifecycle import State
from broker.planner import CallTool, Exit, Observation, Planner
from broker.store.leases import FENCE, LeaseLost
from broker.store.pg_connection import StoreUnavailable
from broker.syscalls.tool import call_in_shape

if TYPE_CHECKING:
    from broker.kernel.ports import SchedulerNeeds
    from broker.kernel.process import AgentProcess

log = logging.getLogger("libos.kernel")


def _schedule_points(task: trio.lowlevel.Task) -> int | None:
    """How many times `task` has been scheduled (trio's own count; None if a trio without
    it: every boundary then yields)."""
    return getattr(task, "_schedule_points", None)


class Scheduler:
    def __init__(self, kernel: SchedulerNeeds) -> None:
        self.kernel = kernel
        self.nursery: trio.Nursery | None = None  # the kernel's, while it is open
        self._committing = False  # the group commit's task runs

    def attach(self, pid: int, planner: Planner) -> None:
        """Give a live process without a running planner (host-driven, or restored after a
        restart) a planner, and start it."""
        proc = self.kernel.process(pid)
        self.kernel.require_live(proc)
        if proc.scope is not None and not proc.done.is_set():
            raise Conflict(f"process {pid} is already running under a planner")
        proc.planner = planner
        self.start(proc)

    def start(self, proc: AgentProcess) -> None:
        if self.nursery is None:
            raise Conflict("the kernel is not open")
        if not self._committing:
            self._committing = True
            self.nursery.start_soon(self.kernel.dispatcher.group.run, name="libos-group-commit")
        # A fresh context: nothing the spawning task set (an MCP call's channel to its
        # client, say) is inherited by the process's task; its lease (one of many brokers)
        # fences every write it makes.
        proc.starting()
        context = contextvars.Context()
        context.run(FENCE.set, self.kernel.leasing.lease(proc.pid))
        context.run(self.nursery.start_soon, self._run, proc, name=f"libos-pid-{proc.pid}")
        # Counted from now, not from its task's first run: a host spawning thousands in a row
        # (each waiting to run, holding its objects) sets off no needless collections.
        young_gc.running(1)

    async def _run(self, proc: AgentProcess) -> None:
        """One process's life: ask the planner, act, observe, repeat, at step boundaries
        honouring pause and budgets."""
        group = self.kernel.dispatcher.group
        group.active += 1  # while others run too, their records are group-committed
        try:  # (from its first line: `start` counted it for `young_gc`)
            assert proc.planner is not None
            await self._drive(proc)
        except (LeaseLost, StoreUnavailable) as exc:  # (from writing how it ended)
            self.kernel.leasing.give_up(proc.pid, str(exc), FENCE.get())
        except StoreGaveUp as exc:  # its end was never stored: it stays as the store has it
            proc.stalled = exc  # (`wait` raises it)
            log.error("process %s stops here, live as the store has it (a broker that opens "
                      "the store again resumes it from its last checkpoint): %s",
                      proc.pid, exc.message)
        finally:
            group.active -= 1
            young_gc.running(-1)
            if proc.alive and proc.planner is None:
                proc.scope = None  # it exec'd into an image no planner drives: the host's now
            else:
                proc.done.set()

    async def _drive(self, proc: AgentProcess) -> None:
        with trio.CancelScope() as scope:
            proc.scope = scope
            wall = proc.image.budget.wall_seconds
            if wall is not None:
                # Counted from the process's birth, so a restart does not grant it a new one.
                spent = max(0.0, self.kernel.clock.now() - proc.started_at)
                scope.deadline = trio.current_time() + max(0.0, wall - spent)
            # A task just started was just scheduled: its first boundary need not yield,
            # unless a wall budget may have run out (a deadline is seen at a schedule point).
            task, yielded, seen = trio.lowlevel.current_task(), wall is None, -1
            try:
                while proc.alive:
                    # The planner is read at every boundary: `proc.exec` replaces it.
                    planner = proc.planner
                    if planner is None:
                        if proc.state == State.RUNNING:
                            self.kernel.move(proc, State.RUNNABLE)
                        return
                    await self._step_boundary(proc, yielded)
                    seen = _schedule_points(task)
                    if proc.exit_request is not None and proc.rerun is None:  # (asked for
                        await self.kernel.exits.finish(proc, *proc.exit_request)  # before a
                        return  # restart: it ends before its planner acts again)
                    action, proc.rerun = proc.rerun, None
                    if action is None:
                        action = await planner.next_action(proc.history.since(proc.history_from))
                        proc.history.seen()  # kept in the store, no longer in memory
                    if isinstance(action, Exit):
                        await self.kernel.exits.finish(proc, action.code, action.result)
                        return
                    await self._step(proc, action)
                    now = _schedule_points(task)
                    yielded = now is not None and now != seen
                    if proc.exit_request is not None:
                        await self.kernel.exits.finish(proc, *proc.exit_request)
                        return
            except (LeaseLost, StoreUnavailable) as exc:
                # Another broker runs it now, or will: nothing more is written for it here.
                self.kernel.leasing.give_up(proc.pid, str(exc), FENCE.get())
            except LimitExceeded:
                pass  # `charge` has already killed the process whose budget ran out
            except StoreGaveUp:
                raise  # (its end, decided, found no store: not another end)
            except LibosError as exc:
                await self._end(proc, {"error": exc.code, "message": exc.message})
            except sqlite3.Error as exc:
                # A write of its own failed (the store fails): it ends with a typed error,
                # once the store takes that end; the broker and the others go on.
                await self._end(proc, {"error": Conflict.code, "message": (
                    f"the store failed its write ({type(exc).__name__}: {exc})")[:200]})
            except Exception as exc:
                log.exception("planner of process %s failed", proc.pid)
                await self._end(proc, {"error": "PLANNER", "message": repr(exc)[:200]})
        if scope.cancelled_caught and proc.alive and wall is not None:
            self.kernel.terminate(proc.pid, f"LimitExceeded: wall time of {wall} s spent")

    async def _end(self, proc: AgentProcess, error: dict[str, str]) -> None:
        """End a process whose planner or step failed (exit 1, `error`): written before it
        shows, waiting for a store that fails (its task, not the broker, waits)."""
        await until_end_stored(proc.pid, lambda: self.kernel.finish(proc, 1, error))

    async def _step_boundary(self, proc: AgentProcess, yielded: bool) -> None:
        """`yielded`: the process's task let others run since the last boundary (a step
        waits for its records' group commit): then only a cancellation is checked here,
        else it yields too (a step that never waited must not starve the others)."""
        if yielded:
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            await trio.lowlevel.checkpoint()
        refusal = self.kernel.store.refusals_of(proc.pid)
        if refusal is not None:  # a deferred write of its was refused for good: it ends
            raise refusal  # with that typed error, as for a write of its own that failed
        if proc.pause_requested and proc.state in (State.RUNNABLE, State.RUNNING):
            proc.pause_requested = False
            self.kernel.move(proc, State.PAUSED, "paused")
        while proc.state == State.PAUSED:
            await proc.resumed.wait()
        # A process stays "running" from step to step while its planner drives it: the
        # store is written when something changes, not at every step; and with the next
        # write (recovery makes a live process runnable whatever the store says).
        if proc.state != State.RUNNING:
            self.kernel.move(proc, State.RUNNING, defer=True)

    async def _act(self, proc: AgentProcess, step: int, action: CallTool) -> Observation:
        try:
            result = await self.kernel.dispatcher.run(  # (the map is the kernel's own)
                proc, None, "tool.call", {"name": action.name, "args": action.args},
                checked=call_in_shape(action.name))
            return Observation(step, action, result=result)
        except LibosError as exc:
            return Observation(step, action, error=exc.to_wire())

    async def _step(self, proc: AgentProcess, action: CallTool) -> None:
        step = len(proc.history)
        # (A budget that runs out kills: a host's held call beside it is chained first.)
        self.kernel.budgets.charge(proc, "steps", lambda: chain_held_calls(proc))
        # Checkpoint the step before it acts: after a crash, recovery knows what was in
        # flight and where in the audit to look for what it did. It is committed with the
        # step's first record (its `tool.call` intent), written before the first await: a
        # crash before that finds the step not begun, and nothing it did.
        chain_held_calls(proc)  # a host's call begun before it is not taken for the step's
        # (Arguments its checkpoint cannot encode are refused before it: `too_deep`.)
        refusal = RecursionError() if too_deep.is_too_deep(action) else None
        if refusal is None:
            try:
                recovery.save_step(self.kernel.store, proc, step, pending=action)
            except TypeError:
                refusal = too_deep.unkeyed(action)  # (a tuple key) or not the action's
                if refusal is None:
                    raise
        if refusal is not None:
            observation = too_deep.refused_step(
                self.kernel.store, proc.pid, step, action,
                lambda: self.kernel.budgets.charge(proc, "syscalls"), refusal)
        else:
            observation = await self._act(proc, step, action)
        proc.history.append(observation)
        # The checkpoint after: committed with the next write (the next step's checkpoint
        # and intent, or another process's record), within `group_commit.WINDOW` at most.
        recovery.save_step(self.kernel.store, proc, step + 1, observation=observation)
        self.kernel.dispatcher.group.soon()
