"""A process's own exit, group-committed: written with the records of the other processes
stepping beside it, in their next commit, instead of in two commits of its own.

While several processes run under planners (`GroupCommit.grouping`), the end a planner
chooses (its `Exit`, or an exit requested of it) is a deferred write (`Store.end_later`): its
process row and its `state` event (with the batched events before it), in one transaction.
The process's task waits for that commit (`GroupCommit.durable`); nothing shows the exit
before it: the process stays as it was in the broker's memory (its state, `wait`, the lineage
counts), and its event reaches no follower, until the commit lands (`landed`, called right
after it). So the exit is durable before anyone can see it, as with `Kernel.finish`.

Whatever else would move the process meanwhile (a kill, a parent's end) lands the exit first
(`land`: committed then and there if it has not been): the exit happened before it, as it
would have without the wait. A process with a request for approval still open when the commit
runs is not ended by it (its requests close in the transaction that ends it): its task ends it
the usual way (`Kernel.finish`) after the commit.

A store that fails the commit is waited for as for any end (`until_end_stored`): after
`STORE_PATIENCE` the task gives up (`StoreGaveUp`, which `wait` raises) and withdraws the
deferred end, so the commit that finally carries it once the store heals stores only the
events before it: the process stays live, as the store has it, and resumes on reopen.
"""

from __future__ import annotations

from contextlib import suppress
from typing import TYPE_CHECKING, Any

import trio

from broker.errors import Conflict, InvalidArgument
from broker.json_text import encoder
from broker.kernel import too_deep
from broker.kernel.audit_detail import summarize
from broker.kernel.faults import STORE_FAULTS, StoreGaveUp, store_faults_typed, until_end_stored
from broker.kernel.summary import without_surrogates
from broker.kernel.trio_thread import on_trio_thread
from broker.lifecycle import LIVE, State
from broker.store.ends import end_taken_back

if TYPE_CHECKING:
    from broker.kernel.events import StoredLater
    from broker.kernel.ports import ExitNeeds
    from broker.kernel.process import AgentProcess


class PendingExit:
    """The end of one process and its event, waiting for the commit that carries them
    (`Store.end_later`)."""

    __slots__ = ("blocked", "code", "committed", "events", "exits", "proc", "reason", "result",
                 "shown", "token")

    def __init__(self, exits: Exits, proc: AgentProcess, code: int, result: Any,
                 events: StoredLater) -> None:
        self.exits, self.proc, self.code, self.result = exits, proc, code, result
        self.reason = f"exit {code}"
        self.events = events
        self.blocked = False  # a request of it was still open: nothing of the exit written
        self.committed = False
        self.shown = False
        self.token = trio.lowlevel.current_trio_token()

    def fields(self) -> dict[str, Any]:
        """Its process row's new fields."""
        return {"state": State.EXITED.value, "reason": self.reason, "exit_code": self.code,
                "result": summarize(self.result), "usage": self.proc.usage.to_json()}

    def after_commit(self, ended: bool | None, seqs: list[int | None]) -> None:
        """Right after the commit, on whichever thread made it: shown on the trio thread.
        `ended` None: the store refused the end for good, and stored only the events beside
        it (`Store.end_later`): those are shown; the end never lands (`_refused`)."""
        self.events.committed(seqs)
        if ended is None:
            show = self.events.show
        else:
            self.blocked, self.committed = not ended, True
            show = self.landed
        if trio.lowlevel.in_trio_run():
            show()
        else:
            with suppress(trio.RunFinishedError):  # (nobody is left to be shown anything)
                self.token.run_sync_soon(show)

    def landed(self) -> None:
        """Durable now: the broker's memory follows, and followers see its events."""
        if self.shown:
            return
        self.shown = True
        proc = self.proc
        if not self.blocked and proc.exiting is self:
            proc.exiting = None
            proc.exit_code, proc.result = self.code, self.result
            if proc.move(State.EXITED, self.reason) in LIVE:
                self.exits.kernel.lineage.ended(proc)
            if proc.scope is None:
                proc.done.set()
        self.events.show()


class Exits:
    def __init__(self, kernel: ExitNeeds) -> None:
        self.kernel = kernel

    async def finish(self, proc: AgentProcess, code: int, result: Any) -> None:
        """`Kernel.finish`, from the process's own task: with the group's next commit while
        others run too."""
        kernel = self.kernel
        group = kernel.dispatcher.group
        _check_code(code)
        result = _storable(result)
        if not (group.grouping and proc.alive and proc.exiting is None) or kernel.leasing.active:
            # (A leased write is never deferred.) The exit is decided: a store that fails
            # now is waited for (its task waits, not the broker), never a different end.
            await until_end_stored(proc.pid, lambda: kernel.finish(proc, code, result))
            return
        with kernel.events.deferring(proc.pid, "state", old=proc.state.value,
                                     new=State.EXITED.value, reason=f"exit {code}") as events:
            pending = proc.exiting = PendingExit(self, proc, code, result, events)
            write = kernel.store.end_later(proc.pid, pending.fields(), events.rows,
                                           pending.after_commit)
        # (A kill meanwhile lands it: `land`.) A store that fails: the exit is decided, it
        # waits for the store below, as any end does.
        with trio.CancelScope(shield=True), suppress(Conflict):
            await group.durable()
        self._refused(proc, pending)
        if proc.exiting is pending and not pending.committed:
            try:  # (not shielded: a kill lands it; a close leaves it)
                await until_end_stored(proc.pid, kernel.store.commit_deferred)
            except StoreGaveUp:
                if write.withdraw():  # (else a commit took it meanwhile: it landed)
                    proc.exiting = None  # nothing of the end written, even once it heals
                    _take_back(kernel, proc.pid, write.record)
                    raise
            self._refused(proc, pending)
        if proc.exiting is pending:  # (else landed already)
            self.land(proc)

    def _refused(self, proc: AgentProcess, pending: PendingExit) -> None:
        """The store refused the deferred end for good (`broker.store.refusals`): nothing of
        it written, so it never lands; the error ends the process instead (the scheduler
        does, as for a write of its own that failed)."""
        refusal = self.kernel.store.refusals_of(proc.pid)
        if refusal is not None and not pending.committed and proc.alive:
            if proc.exiting is pending:  # (else `land` found it set aside, and a pause, say,
                proc.exiting = None  # moved it on: it is live still, and ends with this)
            raise refusal

    @on_trio_thread
    def land(self, proc: AgentProcess) -> None:
        """Before any other move of a process whose exit waits for a commit (and after the
        commit, from its task): the exit lands, committed now if it has not been."""
        pending = proc.exiting
        assert pending is not None
        if not pending.committed:
            # (whoever moves the process, a killer too, gets a typed error, not SQLite's)
            with store_faults_typed:
                self.kernel.store.commit_deferred()
            if not pending.committed:  # set aside (`broker.store.refusals`): nothing of the
                proc.exiting = None  # end is durable, so nothing shows it; the move goes on
                return  # (its task, told by `_refused`, ends it if nothing else does)
        pending.landed()  # (if a worker thread committed it and trio has not run it yet)
        if proc.exiting is pending:  # blocked by an open request: ended with it
            proc.exiting = None
            self.kernel.finish(proc, pending.code, pending.result)


def _take_back(kernel: ExitNeeds, pid: int, record: int) -> None:
    """The end's record (`record`, chained before its row) refused: it waits for the same
    commit, or a later one (lost too, the process is ended at the next open: DESIGN §9)."""
    with suppress(*STORE_FAULTS):
        kernel.store.append_audit(end_taken_back(pid, record - 1), defer=True)


# What the store writes a result with (`json.dumps` with options builds an encoder per call).
_JSON = encoder(default=repr)

# Results JSON keeps as they are, whatever their value (a float goes the whole way; an int
# only within `_CODES`: one of more digits than Python converts to text, 10**5000, is
# refused by the check, not left to fail the deferred write of every process's commit).
_KEPT_AS_IS = frozenset({type(None), bool})

# What a process row's `exit_code` (a SQLite INTEGER, PostgreSQL BIGINT) holds.
_CODES = range(-(1 << 63), 1 << 63)


def _check_code(code: Any) -> None:
    """A planner's exit code the store can keep, else `InvalidArgument` before anything is
    written (the scheduler ends the process with 1 and the error). Unstorable (an image's
    scripted `{"exit": 2**70}`), its end failed its own write, or, deferred, every later
    commit of every process, as `_storable` says of a result."""
    if type(code) is not int or code not in _CODES:
        raise InvalidArgument(f"exit code {summarize(code)!r} is not an integer the store can "
                              "keep")


def _storable(result: Any) -> Any:
    """A planner's exit result as the store can keep it: text that is not Unicode (a lone
    surrogate, which JSON can escape) shown as U+FFFD, else as it is. Unstorable, its deferred
    end would fail every later commit of every process (and alone, be shown but not stored).
    Nested past what the broker stores, or JSON that would not keep it as it is (a set, keys
    of two types or of none), `InvalidArgument` before anything is written (the
    scheduler then ends the process with 1 and the error, as for an exit code it cannot
    keep): a parent's `proc.wait` could not take it. (None, a bool or an int, most planners'
    result, is kept as it is: nothing to walk or encode.)"""
    if type(result) in _KEPT_AS_IS or (type(result) is int and result in _CODES):
        return result
    too_deep.refuse_unplain(result, "the exit result", text=False)
    try:
        _JSON(result).encode()
    except UnicodeEncodeError:
        return without_surrogates(result)
    return result

