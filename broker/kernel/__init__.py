"""The kernel: processes, scheduler, lifecycle, dispatch, events."""

from broker.kernel.bounds import ProcessLimits
from broker.kernel.image import AgentImage, Budget
from broker.kernel.kernel import Kernel
from broker.kernel.process import AgentProcess, State

__all__ = ["AgentImage", "AgentProcess", "Budget", "Kernel", "ProcessLimits", "State"]
