"""proc: the process itself, its children, and leaving."""

from __future__ import annotations

from typing import Any

from broker.caps import CapSpec
from broker.syscalls.context import SyscallContext
from broker.syscalls.table import NAME, PID, TIMEOUT, syscall

CAPS = {"type": "array", "maxItems": 64, "items": {"type": ["object", "string"]}}
SIGNALS = ("kill", "pause", "resume")


@syscall("proc.self", doc="This process: pid, parent, image, state, root, cwd, lineage.")
def proc_self(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    return ctx.services.process_info(ctx.pid)


@syscall(
    "proc.spawn",
    doc="Start a child from an image, with capabilities narrowed from this process's own "
        "(asking for more is NotCapable). Returns the child's pid.",
    args={"image": NAME, "caps": CAPS, "root": {"type": "string", "maxLength": 4096},
          "args": {}},
    required=("image",),
    kind="proc",
    right="spawn",
    resource=lambda ctx, a: a["image"],
)
def proc_spawn(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> int:
    caps = [CapSpec.parse(c) for c in args.get("caps", [])]
    return ctx.services.spawn_child(ctx.pid, args["image"], caps, root=args.get("root"),
                                    args=args.get("args"))


@syscall(
    "proc.wait",
    doc="Wait for a child to end: {pid, state, exit_code, result}.",
    args={"pid": PID, "timeout": TIMEOUT},
    required=("pid",),
    waits=True,
)
async def proc_wait(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    return await ctx.services.wait_child(ctx.pid, args["pid"], args.get("timeout"))


@syscall(
    "proc.signal",
    doc="Send kill, pause or resume to a descendant (others need proc:signal).",
    args={"pid": PID, "signal": {"enum": list(SIGNALS)}},
    required=("pid", "signal"),
)
def proc_signal(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    return ctx.services.signal(ctx.pid, args["pid"], args["signal"])


@syscall(
    "proc.exit",
    doc="End this process once the current step returns, with a code and a result.",
    args={"code": {"type": "integer", "minimum": 0, "maximum": 255}, "result": {}},
)
def proc_exit(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> None:
    ctx.services.request_exit(ctx.pid, args.get("code", 0), args.get("result"))
