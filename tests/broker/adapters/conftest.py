"""What every adapter test drives: a real kernel over a real store, with a real Deno sandbox,
one host tool (an email sender scoped by recipient, some recipients behind a person) and one
TypeScript tool that writes a file and maybe a copy (some paths behind a person), in one
process's table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from broker import AgentImage, CallLimits, HostCall, Kernel, host_tool
from sandboxes.deno import DenoSandbox


@host_tool(kind="email", right="send", resource=lambda args: args["to"].lower())
def send_email(call: HostCall, to: str, subject: str) -> dict[str, Any]:
    """Send an email."""
    call.state.append(to)
    return {"queued": len(call.state)}


SHOUT = """
export default async function run(args: { path: string, text: string, copy?: string },
                                  libos: any) {
  await libos.fs.write(args.path, args.text.toUpperCase());
  if (args.copy) await libos.fs.write(args.copy, args.text.toUpperCase());
  return { written: args.path };
}
"""
SHOUT_TOOL = {"name": "shout", "lang": "ts", "source": SHOUT,
              "description": "Write a text, upper-cased, to a file (and a copy).",
              "schema": {"type": "object", "required": ["path", "text"],
                         "properties": {"path": {"type": "string"},
                                        "text": {"type": "string"},
                                        "copy": {"type": "string"}},
                         "additionalProperties": False}}
CAPS: list[Any] = [
    "email:*@example.com:send",
    {"kind": "email", "scope": "*@partner.com", "rights": ["send"], "effect": "ask"},
    "fs:/notes/**:read,write",
    {"kind": "fs", "scope": "/shared/**", "rights": ["write"], "effect": "ask"},
]


LIMITS = CallLimits(deadline=30.0, memory_mb=96)  # a loaded machine starts Deno slowly


@dataclass
class World:
    kernel: Kernel
    pid: int
    root: Path  # the process's files
    outbox: list[str] = field(default_factory=list)

    def records(self, *phases: str) -> list[tuple[str, str, str | None]]:
        return [(r["phase"], r["syscall"], r["resource"]) for r in self.kernel.audit(self.pid)
                if not phases or r["phase"] in phases]


@pytest.fixture
async def deno() -> AsyncIterator[DenoSandbox]:
    async with DenoSandbox(spares=1, memory_mb=LIMITS.memory_mb, check_timeout=1.0) as sandbox:
        yield sandbox


@pytest.fixture
async def world(tmp_path: Path, deno: DenoSandbox) -> AsyncIterator[World]:
    outbox: list[str] = []
    for folder in ("notes", "shared"):
        (tmp_path / "libos-fs" / folder).mkdir(parents=True)
    async with Kernel.open(tmp_path / "libos.db", sandboxes=[deno], host_tools=[send_email],
                           host_state=outbox, call_limits=LIMITS) as kernel:
        await kernel.register_image(AgentImage(
            "assistant", tools=("send_email", SHOUT_TOOL),
            needs=["email:*:send", "fs:/**:read,write"]))
        pid = kernel.spawn("assistant", caps=CAPS)
        yield World(kernel, pid, tmp_path / "libos-fs", outbox)
