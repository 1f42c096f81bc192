"""Planners: the interface, a deterministic scripted planner, real-model adapters."""

from broker.planner.base import Action, CallTool, Exit, Observation, Planner, action_from_json
from broker.planner.scripted import ScriptedPlanner

__all__ = ["Action", "CallTool", "Exit", "Observation", "Planner", "ScriptedPlanner",
           "action_from_json"]
