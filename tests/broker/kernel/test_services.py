"""What a primitive is handed: its services, never the kernel. The object in a running
syscall's context has exactly the names of the `Services` protocol, and nothing can be
added to it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from broker import Kernel
from broker.syscalls import TABLE, SyscallContext
from broker.syscalls.context import Services
from tests.conftest import open_image

# What a primitive could do with the whole kernel, and must not be able to reach.
KERNEL_ONLY = ("spawn", "kill", "pause", "resume", "approve", "deny", "revoke", "call_tool",
               "register_image", "dispatcher", "queue", "caps", "tools", "process", "holds",
               "spawner", "controls", "scheduler", "kernel", "audit")


def protocol_names() -> set[str]:
    return {n for n in vars(Services) if not n.startswith("_")} | set(
        Services.__annotations__)


async def test_a_primitive_is_handed_only_its_services(kernel: Kernel,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[SyscallContext] = []
    spec = TABLE["proc.self"]

    def watched(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> Any:
        seen.append(ctx)
        return spec.handler(ctx, args, proof)

    monkeypatch.setitem(TABLE, "proc.self", dataclasses.replace(spec, handler=watched))
    await open_image(kernel)
    pid = kernel.spawn("agent")
    info = await kernel.call_tool(pid, "whoami")  # the builtin tool: one proc.self syscall
    assert info["pid"] == pid  # the primitive itself works as before

    [ctx] = seen
    services = ctx.services
    assert services is not kernel
    assert {n for n in dir(services) if not n.startswith("_")} == protocol_names()
    for name in KERNEL_ONLY:
        assert not hasattr(services, name), name
    with pytest.raises(AttributeError):
        services.kernel = kernel  # type: ignore[attr-defined]
    # The providers are the kernel's own.
    assert (services.store, services.fs, services.clock) == (kernel.store, kernel.fs,
                                                            kernel.clock)


async def test_the_providers_a_host_replaces_are_the_ones_primitives_use(
        kernel: Kernel) -> None:
    shell = object()
    kernel.shell = shell  # type: ignore[assignment]
    assert kernel.services.shell is shell and kernel.shell is shell
