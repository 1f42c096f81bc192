"""The embedding API is small and curated: this pins it, so a change is a decision."""

from __future__ import annotations

import broker

PUBLIC = {
    "AgentImage", "ApprovalDenied", "Budget", "CallLimits", "CallTool", "Cancelled",
    "CapSpec", "Conflict", "Exit", "FakeClock", "InvalidArgument", "Kernel", "LibosError",
    "LimitExceeded", "NotCapable", "NotFound", "Observation", "Planner", "ProcessLimits",
    "ProtocolError",
    "RealClock", "SandboxCrashed", "ScriptedPlanner", "State",
    "HostCall", "HostTool", "ToolFailed", "host_tool",
}


def test_public_api_is_pinned() -> None:
    assert set(broker.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(broker, name) is not None


def test_kernel_offers_the_embedding_verbs() -> None:
    for verb in ("open", "register_image", "spawn", "call_tool", "wait", "kill", "pause",
                 "resume", "audit", "verify_audit", "capabilities", "revoke", "ps",
                 "list_tools", "define_type", "host_tool"):
        assert callable(getattr(broker.Kernel, verb)), verb
