"""Fixtures for the sandbox suites: a warm Deno pool and a real kernel over it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import AgentImage, CallLimits, Kernel
from sandboxes.deno import DenoSandbox
from tests.conftest import ALL_BUILTINS

CAPS = ["fs:/data/**:read,write", "obj:*:read,write", "clock:*:read,sleep",
        "tool:*:register,call"]
NEEDS = ("fs:/**:read,write", "obj:*:read,write", "clock:*:read,sleep", "proc:*:spawn",
         "tool:*:register,call")
LIMITS = CallLimits(deadline=2.0, max_syscalls=300, max_output_bytes=64 << 10, memory_mb=96)


@pytest.fixture
async def deno(request: pytest.FixtureRequest) -> AsyncIterator[DenoSandbox]:
    """A warm Deno pool; a module sets DENO_SPARES to keep more spares ready."""
    spares = getattr(request.module, "DENO_SPARES", 1)
    async with DenoSandbox(spares=spares, memory_mb=LIMITS.memory_mb,
                           check_timeout=1.0) as sandbox:
        yield sandbox


@pytest.fixture
async def dk(tmp_path: Path, deno: DenoSandbox) -> AsyncIterator[Kernel]:
    """A kernel with the Deno sandbox and an image that may be granted the usual caps."""
    (tmp_path / "libos-fs" / "data").mkdir(parents=True)
    async with Kernel.open(tmp_path / "libos.db", sandboxes=[deno], call_limits=LIMITS) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        yield k
