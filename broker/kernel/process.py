"""AgentProcess: identity, lineage, lifecycle state (moved only as `broker.lifecycle` allows),
usage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from broker.caps import CapabilityTable
from broker.errors import Conflict, LibosError
from broker.kernel.history import History
from broker.kernel.image import AgentImage
from broker.lifecycle import LIVE, TRANSITIONS, State
from broker.planner import CallTool, Planner


@dataclass(slots=True)
class Usage:
    steps: int = 0
    tool_calls: int = 0
    syscalls: int = 0
    log_bytes: int = 0  # charged log output (see `ProcessLimits.log_bytes`)

    def to_json(self) -> dict[str, int]:
        return {"steps": self.steps, "tool_calls": self.tool_calls, "syscalls": self.syscalls,
                "log_bytes": self.log_bytes}


@dataclass(eq=False, slots=True)
class AgentProcess:
    pid: int
    parent: int | None
    image: AgentImage
    caps: CapabilityTable
    root: str = "/"
    cwd: str = "/"
    state: State = State.CREATED
    reason: str | None = None
    exit_code: int | None = None
    result: Any = None
    planner: Planner | None = None
    args: Any = None
    started_at: float = 0.0
    usage: Usage = field(default_factory=Usage)
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    children: list[int] = field(default_factory=list)
    # Its steps so far: the kernel gives it a `History` that reads older steps from the store.
    history: History = field(default=None)  # type: ignore[assignment]
    exit_request: tuple[int, Any] | None = None
    pause_requested: bool = False
    # Who holds it paused (see `broker.kernel.holds`): it runs only while nobody does.
    holds: set[str] = field(default_factory=set)
    # A step a crash cut off that recovery found safe to run again (it touched nothing).
    rerun: CallTool | None = None
    # Where its planner's history starts: the step after its last `proc.exec` (the planner
    # rebuilt from the new image sees only what came after).
    history_from: int = 0
    # How many times it replaced its image in this broker: a sandbox serving it before an
    # exec never serves it after (see `Invocation.authority`).
    era: int = 0
    # Its context label (`broker.caps.labels`): the join of everything its planner has seen.
    label: frozenset[str] = frozenset()
    # Its exit, while it waits for a group commit (`broker.kernel.exiting.PendingExit`).
    exiting: Any = None
    # Its tools' call plans (`broker.kernel.tool_plans`), with the table they were made for.
    plans: tuple[dict[str, dict[str, Any]], dict[str, Any]] | None = None
    # The text of its checkpoints' rarely changing part, with what it was made from
    # (`broker.kernel.checkpoint_text`).
    checkpoint_text: tuple[Any, ...] | None = None
    # The action of its step in flight and its JSON text (ASCII), as its checkpoint before
    # the step wrote it: the checkpoint after, whose observation holds the same action,
    # writes that text again instead of encoding it again.
    step_action: tuple[Any, str] | None = None
    # Its top-level `tool.call` records still held (`broker.kernel.held_call.HeldCall`), in
    # the order the calls began: chained before another top-level call's record or a step's
    # checkpoint, so recovery's first top-level call after a checkpoint is the step's own.
    held_calls: list[Any] = field(default_factory=list)
    scope: trio.CancelScope | None = None
    # Loaded ended, its row's result not the one its end recorded: why (`end_result`).
    forged: str | None = None
    # Why its task stopped with the process alive: its end found no store (`StoreGaveUp`).
    stalled: LibosError | None = None
    # Its events, made when first asked for (most processes are never waited on, and an idle
    # process's memory counts: issue #17).
    _done: trio.Event | None = field(default=None, init=False, repr=False)
    _resumed: trio.Event | None = field(default=None, init=False, repr=False)

    @property
    def done(self) -> trio.Event:
        """Set once it has ended."""
        if self._done is None:
            self._done = trio.Event()
        return self._done

    @property
    def resumed(self) -> trio.Event:
        """Set at its next resume (`wake_resumed`)."""
        if self._resumed is None:
            self._resumed = trio.Event()
        return self._resumed

    def starting(self) -> None:
        """Its task starts (again): a process whose last task stopped with it alive (its end
        found no store: `stalled`, `done` set so that `wait` raised that) is waited for
        afresh, and is driven by this task alone (`Scheduler.attach` refuses a second)."""
        self.stalled = None
        if self._done is not None and self._done.is_set() and self.alive:
            self._done = None

    def wake_resumed(self) -> None:
        """Wake whoever waits for it to run again; a wait begun later waits for the resume
        after this one."""
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    @property
    def alive(self) -> bool:
        return self.state in LIVE

    def allows(self, new: State) -> None:
        """`Conflict` for a transition the lifecycle does not allow (before it is written)."""
        if new not in TRANSITIONS[self.state]:
            raise Conflict(f"process {self.pid}: illegal transition {self.state} -> {new}")

    def move(self, new: State, reason: str | None = None) -> State:
        """Change state, or raise `Conflict` for a transition the lifecycle does not allow."""
        self.allows(new)
        old, self.state, self.reason = self.state, new, reason
        return old
