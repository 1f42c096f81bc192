"""libos: a runtime for long-running, capability-controlled LLM agents.

What an embedding user needs: open a kernel, register an image, spawn, run, call tools,
read the audit. Everything else is internal.
"""

from broker.caps import CapSpec
from broker.errors import (
    ApprovalDenied,
    Cancelled,
    Conflict,
    InvalidArgument,
    LibosError,
    LimitExceeded,
    NotCapable,
    NotFound,
    ProtocolError,
    SandboxCrashed,
    ToolFailed,
)
from broker.kernel import AgentImage, Budget, Kernel, ProcessLimits, State
from broker.kernel.host_tool import HostCall, HostTool, host_tool
from broker.planner import CallTool, Exit, Observation, Planner, ScriptedPlanner
from broker.providers.clock import FakeClock, RealClock
from sandboxes.base import CallLimits

__all__ = [
    "AgentImage",
    "ApprovalDenied",
    "Budget",
    "CallLimits",
    "CallTool",
    "Cancelled",
    "CapSpec",
    "Conflict",
    "Exit",
    "FakeClock",
    "HostCall",
    "HostTool",
    "InvalidArgument",
    "Kernel",
    "LibosError",
    "LimitExceeded",
    "NotCapable",
    "NotFound",
    "Observation",
    "Planner",
    "ProcessLimits",
    "ProtocolError",
    "RealClock",
    "SandboxCrashed",
    "ScriptedPlanner",
    "State",
    "ToolFailed",
    "host_tool",
]
