"""Planners from an image's planner settings (data): `scripted`, `openai`, `anthropic`.

Model settings: `model`, `base_url`, `api_key_env` (the name of the environment variable
that holds the key; keys are never stored), `system`, `max_tokens`, `temperature`,
`timeout`, `max_retries`, `max_failures` (failed tool results in a row before the process
exits 1), `max_context` (characters of tool results, model text and call arguments kept;
older ones are elided), `max_calls` (tool calls in one reply), `max_argument_chars` (one
call's arguments), and a default `goal`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.errors import InvalidArgument
from broker.planner.base import Planner
from broker.planner.bounds import DEFAULT_MAX_ARGUMENT_CHARS, DEFAULT_MAX_CALLS
from broker.planner.scripted import ScriptedPlanner

if TYPE_CHECKING:
    from broker.planner.chat import ToolTable

DEFAULT_GOAL = "Begin."


def goal_of(args: Any, settings: dict[str, Any]) -> str:
    """The goal: the process's spawn args (text, or {"goal": text}), else the settings'."""
    if isinstance(args, str) and args:
        return args
    if isinstance(args, dict) and isinstance(args.get("goal"), str):
        return args["goal"]
    goal = settings.get("goal", DEFAULT_GOAL)
    return goal if isinstance(goal, str) else DEFAULT_GOAL


def planner_from_settings(settings: dict[str, Any], *, image: str, tools: ToolTable,
                          args: Any = None, state: Any = None) -> Planner | None:
    """Build the planner an image describes; `state` is a checkpointed planner snapshot to
    resume from (a model planner's conversation)."""
    if not settings:
        return None
    kind = settings.get("kind")
    planner: Any
    if kind == "scripted":
        return ScriptedPlanner(list(settings.get("actions", [])))
    if kind == "openai":
        from broker.planner.openai import OpenAIBackend

        backend: Any = OpenAIBackend(settings)
    elif kind == "anthropic":
        from broker.planner.anthropic import AnthropicBackend

        backend = AnthropicBackend(settings)
    else:
        raise InvalidArgument(f"image {image}: no planner of kind {kind!r}")
    # (imported here, with its model's backend: a scripted planner never needs it)
    from broker.planner.chat import DEFAULT_MAX_CONTEXT, DEFAULT_MAX_FAILURES, ChatPlanner

    planner = ChatPlanner(backend, tools, goal=goal_of(args, settings),
                          system=settings.get("system"),
                          max_failures=int(settings.get("max_failures", DEFAULT_MAX_FAILURES)),
                          max_context=int(settings.get("max_context", DEFAULT_MAX_CONTEXT)),
                          max_calls=int(settings.get("max_calls", DEFAULT_MAX_CALLS)),
                          max_argument_chars=int(settings.get("max_argument_chars",
                                                              DEFAULT_MAX_ARGUMENT_CHARS)))
    if isinstance(state, dict) and isinstance(state.get("turns"), list):
        planner.restore(state)
    return planner
