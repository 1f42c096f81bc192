"""Fixtures and helpers for the sandbox suites: warm Deno and Pyodide pools, a real kernel
over each, and the calls every suite makes (spawn an agent, register a tool, call it)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from broker import AgentImage, CallLimits, Kernel
from sandboxes.base import Sandbox
from sandboxes.deno import DenoSandbox
from sandboxes.pyodide import PyodideSandbox
from tests.conftest import ALL_BUILTINS

CAPS = ["fs:/data/**:read,write", "obj:*:read,write", "clock:*:read,sleep",
        "tool:*:register,call"]
NEEDS = ("fs:/**:read,write", "obj:*:read,write", "clock:*:read,sleep", "proc:*:spawn",
         "tool:*:register,call")
LIMITS = CallLimits(deadline=2.0, max_syscalls=300, max_output_bytes=64 << 10, memory_mb=96)
# For tests of another limit than the deadline: a loaded machine (cold sandboxes, a heap
# filling slowly) must not make the deadline come first.
SLOW_OK = dataclasses.replace(LIMITS, deadline=30.0)
# How late past its deadline a killed call may come back: generous, because a loaded machine
# is slow to reap a process, yet far below "it ran on".
DEADLINE_SLACK = 6.0


@pytest.fixture
async def deno(request: pytest.FixtureRequest) -> AsyncIterator[DenoSandbox]:
    """A warm Deno pool; a module sets DENO_SPARES to keep more spares ready."""
    spares = getattr(request.module, "DENO_SPARES", 1)
    async with DenoSandbox(spares=spares, memory_mb=LIMITS.memory_mb,
                           check_timeout=1.0) as sandbox:
        yield sandbox


@asynccontextmanager
async def kernel_over(tmp_path: Path, sandbox: Sandbox, limits: CallLimits = LIMITS, *,
                      store: str | Path | None = None) -> AsyncIterator[Kernel]:
    """A kernel with one sandbox and an image that may be granted the usual caps, over
    `tmp_path/libos.db` or `store` (its files under `tmp_path/libos-fs` either way)."""
    (tmp_path / "libos-fs" / "data").mkdir(parents=True)
    async with Kernel.open(store or tmp_path / "libos.db", fs_root=tmp_path / "libos-fs",
                           sandboxes=[sandbox], call_limits=limits) as k:
        await k.register_image(AgentImage("agent", tools=ALL_BUILTINS, needs=NEEDS))
        yield k


def limits_for(request: pytest.FixtureRequest) -> CallLimits:
    """`SLOW_OK` for a test marked `slow_ok` (it tests another limit than the deadline)."""
    return SLOW_OK if request.node.get_closest_marker("slow_ok") else LIMITS


@pytest.fixture
async def dk(request: pytest.FixtureRequest, tmp_path: Path,
             deno: DenoSandbox) -> AsyncIterator[Kernel]:
    async with kernel_over(tmp_path, deno, limits_for(request)) as k:
        yield k


@pytest.fixture
async def pyodide(request: pytest.FixtureRequest) -> AsyncIterator[PyodideSandbox]:
    """A warm Pyodide pool; a module sets PYODIDE_SPARES to keep more spares ready."""
    spares = getattr(request.module, "PYODIDE_SPARES", 1)
    async with PyodideSandbox(spares=spares, memory_mb=LIMITS.memory_mb) as sandbox:
        yield sandbox


@pytest.fixture
async def pk(request: pytest.FixtureRequest, tmp_path: Path,
             pyodide: PyodideSandbox) -> AsyncIterator[Kernel]:
    async with kernel_over(tmp_path, pyodide, limits_for(request)) as k:
        yield k


def agent(kernel: Kernel, caps: list[str] | None = None) -> int:
    return kernel.spawn("agent", caps=CAPS if caps is None else caps)


async def register_tool(kernel: Kernel, pid: int, name: str, source: str, *, lang: str,
                        **extra: Any) -> dict[str, Any]:
    return await kernel.call_tool(pid, "register_tool", {
        "name": name, "lang": lang, "source": source, **extra})


async def run_tool(kernel: Kernel, pid: int, source: str, args: Any = None, *, lang: str,
                   name: str = "t", **extra: Any) -> Any:
    """Register `source` as a tool (in place of one of that name) and call it once."""
    await register_tool(kernel, pid, name, source, lang=lang, replace=True, **extra)
    return await kernel.call_tool(pid, name, {} if args is None else args)


class Served:
    """Which OS process ran each sandboxed call, as the host sees it (tool code cannot learn
    its own pid): (libos pid, tool, OS pid) in the order the calls were sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, int]] = []

    def pids(self, tool: str) -> list[int]:
        return [os_pid for _, name, os_pid in self.calls if name == tool]

    def last(self, tool: str) -> int:
        return self.pids(tool)[-1]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Served:
    """Record the OS process every Deno or Pyodide sandbox call is sent to."""
    record = Served()
    send = DenoSandbox._run

    async def _run(self: DenoSandbox, sb: Any, tool: str, *rest: Any) -> Any:
        host, what = rest[-3], rest[-1]
        if what == "call":
            record.calls.append((host.pid, tool, sb.process.pid))
        return await send(self, sb, tool, *rest)

    monkeypatch.setattr(DenoSandbox, "_run", _run)
    return record


async def killed_since(driver: Any, killed: int, timeout: float = 5) -> None:
    """Wait (at most `timeout` s) until the driver has killed a sandbox since its count was
    `killed`."""
    with trio.fail_after(timeout):
        while driver.stats["killed"] == killed:
            await trio.sleep(0.01)


def logs(kernel: Kernel, pid: int) -> list[str]:
    return [e["data"]["text"] for e in kernel.store.events(pid=pid) if e["kind"] == "log"]


def audit_of(kernel: Kernel, pid: int, syscall: str) -> list[dict[str, Any]]:
    return [r for r in kernel.audit(pid) if r["syscall"] == syscall]
