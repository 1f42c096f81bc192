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
    # approvals: the front-end protocol, what it is handed, and a policy that answers
    "ApprovalQueue", "AutoPolicy", "FrontEnd",
    # the sandboxes this machine has, and the kernel in a thread for non-trio programs
    "open_sandboxes", "KernelThread",
}


def test_public_api_is_pinned() -> None:
    assert set(broker.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(broker, name) is not None


def test_kernel_offers_the_embedding_verbs() -> None:
    for verb in ("open", "register_image", "spawn", "call_tool", "wait", "kill", "pause",
                 "resume", "audit", "verify_audit", "capabilities", "revoke", "ps",
                 "list_tools", "define_type", "host_tool", "approvals", "approve", "deny",
                 "answer", "put_object", "get_object", "write_file", "read_file", "exit"):
        assert callable(getattr(broker.Kernel, verb)), verb


def test_the_approval_and_sandbox_exports_are_the_ones_the_kernel_uses() -> None:
    from broker.kernel import approvals
    from sandboxes import available

    assert broker.AutoPolicy is approvals.AutoPolicy
    assert broker.FrontEnd is approvals.FrontEnd
    assert broker.ApprovalQueue is approvals.ApprovalQueue
    assert broker.open_sandboxes is available.open_sandboxes
