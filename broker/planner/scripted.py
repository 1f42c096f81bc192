"""A deterministic planner: a list of actions, or a function of the observations so far."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from inspect import isawaitable
from typing import Any

from broker.planner.base import Action, Exit, Observation, action_from_json

Policy = Callable[[Sequence[Observation]], Action | Awaitable[Action]]


class ScriptedPlanner:
    """Plays `script` in order, then exits 0. With a callable, asks it each step; it sees
    every observation so far and may branch on results and errors."""

    def __init__(self, script: Sequence[Action | dict[str, Any]] | Policy) -> None:
        if callable(script):
            self._policy: Policy | None = script
            self._actions: list[Action] = []
        else:
            self._policy = None
            self._actions = [a if isinstance(a, Exit) or not isinstance(a, dict)
                             else action_from_json(a) for a in script]

    async def next_action(self, history: Sequence[Observation]) -> Action:
        if self._policy is not None:
            action = self._policy(history)
            return await action if isawaitable(action) else action
        step = len(history)
        return self._actions[step] if step < len(self._actions) else Exit(0)
