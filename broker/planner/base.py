"""The planner interface: given what happened so far, choose the next action."""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class CallTool:
    """Call a tool of the process's table."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Exit:
    """End the process."""

    code: int = 0
    result: Any = None


Action = CallTool | Exit


@dataclass(frozen=True, slots=True)
class Observation:
    """What the last action produced: a result, or a typed error (code and message)."""

    step: int
    action: Action | None
    result: Any = None
    error: dict[str, str] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Planner(Protocol):
    async def next_action(self, history: Sequence[Observation]) -> Action: ...


def action_from_json(value: Any) -> Action:
    """Actions written as data (an image's scripted planner): {"tool": name, "args": {...}}
    or {"exit": code, "result": ...}."""
    from broker.errors import InvalidArgument

    if isinstance(value, dict) and isinstance(value.get("tool"), str):
        args = value.get("args", {})
        if not isinstance(args, dict):
            raise InvalidArgument("a scripted action's args must be a map")
        return CallTool(value["tool"], args)
    if isinstance(value, dict) and "exit" in value:
        return Exit(int(value["exit"]), value.get("result"))
    raise InvalidArgument(f"not an action: {reprlib.repr(value)}")  # (bounded: any value)


def action_as_recorded(value: Any) -> Action | None:
    """An action read back from a process's history or pending step: what its planner chose,
    as it chose it, checked or not (a planner's `CallTool(7)` or args that are not a map was
    refused when it ran, and is shown to the planner again as it was). Not a map of either
    form (a row edited behind the broker's back): None, no action known."""
    if isinstance(value, dict) and "tool" in value:
        return CallTool(value["tool"], value.get("args", {}))
    if isinstance(value, dict) and "exit" in value:
        return Exit(value["exit"], value.get("result"))
    return None

