"""The process lifecycle: its states and the only legal moves between them.

At the bottom of the layers: the kernel moves processes through it, and readers of the store
that run without a kernel (the approval rules) ask whether a stored process is still live.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    CREATED = "created"
    RUNNABLE = "runnable"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    EXITED = "exited"
    KILLED = "killed"


LIVE = frozenset({State.CREATED, State.RUNNABLE, State.RUNNING, State.WAITING, State.PAUSED})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.CREATED: frozenset({State.RUNNABLE, State.KILLED}),
    State.RUNNABLE: frozenset({State.RUNNING, State.PAUSED, State.EXITED, State.KILLED}),
    State.RUNNING: frozenset(
        {State.RUNNABLE, State.WAITING, State.PAUSED, State.EXITED, State.KILLED}),
    State.WAITING: frozenset({State.RUNNING, State.PAUSED, State.KILLED}),
    State.PAUSED: frozenset({State.RUNNABLE, State.KILLED}),
    State.EXITED: frozenset(),
    State.KILLED: frozenset(),
}
