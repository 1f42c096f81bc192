"""clock: what time it is, and waiting (through the injected clock provider)."""

from __future__ import annotations

from typing import Any

from broker.syscalls.context import SyscallContext
from broker.syscalls.table import syscall

MAX_SLEEP = 24 * 3600.0


@syscall("clock.now", idempotent=True, doc="Seconds since the epoch.", kind="clock", right="read",
         resource=lambda ctx, a: "*")
def clock_now(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> float:
    return ctx.services.clock.now()


@syscall(
    "clock.sleep",
    idempotent=True,
    doc="Sleep for a number of seconds (at most a day).",
    args={"seconds": {"type": "number", "minimum": 0, "maximum": MAX_SLEEP}},
    required=("seconds",),
    kind="clock",
    right="sleep",
    resource=lambda ctx, a: "*",
    waits=True,
)
async def clock_sleep(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> None:
    await ctx.services.clock.sleep(args["seconds"])
