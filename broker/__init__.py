"""libos: a runtime for long-running, capability-controlled LLM agents.

What an embedding user needs: open a kernel (in trio, or in a thread of its own for plain or
asyncio programs), open the sandboxes, register an image, spawn, run, call tools, answer
approvals (or let a policy answer them), read the audit. Everything else is internal.
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
from broker.kernel.approvals import ApprovalQueue, AutoPolicy, FrontEnd
from broker.kernel.host_tool import HostCall, HostTool, host_tool
from broker.kernel_thread import KernelThread
from broker.planner import CallTool, Exit, Observation, Planner, ScriptedPlanner
from broker.providers.clock import FakeClock, RealClock
from sandboxes.available import open_sandboxes
from sandboxes.base import CallLimits

__all__ = [
    "AgentImage",
    "ApprovalDenied",
    "ApprovalQueue",
    "AutoPolicy",
    "Budget",
    "CallLimits",
    "CallTool",
    "Cancelled",
    "CapSpec",
    "Conflict",
    "Exit",
    "FakeClock",
    "FrontEnd",
    "HostCall",
    "HostTool",
    "InvalidArgument",
    "Kernel",
    "KernelThread",
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
    "open_sandboxes",
]
