"""The embedding API is small and curated: this pins it, so a change is a decision."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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


def test_import_broker_loads_no_kernel_until_a_name_is_used() -> None:
    """`import broker` is cheap (a CLI start, an embedder's import): trio, the store and the
    kernel load when a public name is first used, and that name is the kernel's own."""
    code = ("import sys, json, broker; before = sorted(m for m in ('trio', 'sqlite3', "
            "'broker.kernel', 'sandboxes.available') if m in sys.modules); "
            "from broker import Kernel; from broker.kernel import Kernel as K; "
            "print(json.dumps([before, Kernel is K, 'trio' in sys.modules]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [[], True, True]


def test_an_unknown_name_is_an_attribute_error() -> None:
    assert "Kernel" in dir(broker)
    with pytest.raises(AttributeError, match="NoSuchThing"):
        broker.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
