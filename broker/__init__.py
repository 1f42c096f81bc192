"""libos: a runtime for long-running, capability-controlled LLM agents.

What an embedding user needs: open a kernel (in trio, or in a thread of its own for plain or
asyncio programs), open the sandboxes, register an image, spawn, run, call tools, answer
approvals (or let a policy answer them), read the audit. Everything else is internal.

The names are loaded when first used (PEP 562): `import broker` (and a CLI verb that needs
no kernel) does not pay for trio, the store and the kernel until one of them is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from broker.caps import CapSpec
    from broker.kernel import AgentImage, Budget, Kernel, ProcessLimits, State
    from broker.kernel.approvals import ApprovalQueue, AutoPolicy, FrontEnd
    from broker.kernel.host_tool import HostCall, HostTool, host_tool
    from broker.kernel_thread import KernelThread
    from broker.planner import CallTool, Exit, Observation, Planner, ScriptedPlanner
    from broker.providers.clock import FakeClock, RealClock
    from sandboxes.available import open_sandboxes
    from sandboxes.base import CallLimits

# Where each lazily loaded public name lives.
_LAZY = {
    "CapSpec": "broker.caps",
    **dict.fromkeys(("AgentImage", "Budget", "Kernel", "ProcessLimits", "State"),
                    "broker.kernel"),
    **dict.fromkeys(("ApprovalQueue", "AutoPolicy", "FrontEnd"), "broker.kernel.approvals"),
    **dict.fromkeys(("HostCall", "HostTool", "host_tool"), "broker.kernel.host_tool"),
    "KernelThread": "broker.kernel_thread",
    **dict.fromkeys(("CallTool", "Exit", "Observation", "Planner", "ScriptedPlanner"),
                    "broker.planner"),
    **dict.fromkeys(("FakeClock", "RealClock"), "broker.providers.clock"),
    "open_sandboxes": "sandboxes.available",
    "CallLimits": "sandboxes.base",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'broker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
