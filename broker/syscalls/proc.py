"""proc: the process itself, its children, and leaving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from broker.caps import CapSpec, Decision
from broker.errors import InvalidArgument
from broker.protocol.messages import unframable
from broker.syscalls.context import SyscallContext
from broker.syscalls.table import NAME, PID, TIMEOUT, syscall

CAPS = {"type": "array", "maxItems": 64, "items": {"type": ["object", "string"]}}
SIGNALS = ("kill", "pause", "resume")


@syscall("proc.self", idempotent=True,
         doc="This process: pid, parent, image, state, root, cwd, lineage.")
def proc_self(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    return ctx.services.process_info(ctx.pid)


def _spawn_authority(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    decision = ctx.check("proc", "spawn", args["image"])
    caps = [CapSpec.parse(c) for c in args.get("caps", [])]
    ctx.services.check_spawn(ctx.pid, args["image"], caps)
    return decision


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
    authorize=_spawn_authority,
)
def proc_spawn(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> int:
    caps = [CapSpec.parse(c) for c in args.get("caps", [])]
    # (its outcome carries the digest of each capability row the child is granted)
    return ctx.services.spawn_child(ctx.pid, args["image"], caps, root=args.get("root"),
                                    args=args.get("args"), labels=ctx.label,
                                    vouch=ctx.outcome_detail)


def _exec_authority(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    decision = ctx.check("proc", "exec", args["image"])
    ctx.services.check_exec(ctx.pid, args["image"], args.get("version"))
    return decision


@syscall(
    "proc.exec",
    doc="Replace this process's image (needs proc:<image>:exec): same pid, lineage, mailbox and "
        "Object Memory; capabilities narrowed to what the new image declares; its tool table "
        "and a fresh planner (with args, a new goal) from the new image. Returns {pid, from, "
        "to, checkpoint, caps, retired}.",
    args={"image": NAME, "version": {"type": "string", "minLength": 1, "maxLength": 64},
          "args": {}},
    required=("image",),
    kind="proc",
    right="exec",
    resource=lambda ctx, a: a["image"],
    authorize=_exec_authority,
    blocking=True,  # it rebuilds the planner and may start it: on the broker's own thread
    # Not free of effect, but running it again converges on the same state (narrowing what is
    # already narrow keeps it): recovery may run an exec step a crash cut off again.
    idempotent=True,
)
async def proc_exec(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    return ctx.services.exec_image(ctx.pid, args["image"], args.get("version"),
                                   args=args.get("args"), new_args="args" in args)


@syscall(
    "proc.wait",
    idempotent=True,
    doc="Wait for a child to end: {pid, state, exit_code, result}.",
    args={"pid": PID, "timeout": TIMEOUT},
    required=("pid",),
    waits=True,
)
async def proc_wait(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    ended = _taken(ctx, await ctx.services.wait_child(ctx.pid, args["pid"], args.get("timeout")))
    _sendable(ctx, ended, "proc.wait", "the child's end")
    return ended


def _tool_answered(ctx: SyscallContext) -> Any:
    """The sandboxed tool's invocation the answer goes to, or None: the planner's stays in
    the broker (no frame bounds it), and so does a builtin's, unless a sandboxed tool called
    that builtin (`tool.call`): its answer is that tool's call's answer (red team 26: a WASM
    tool's call of the builtin `receive` took the message set aside as past its bound, and
    its call failed `LIMIT_EXCEEDED`: the message taken, delivered to no one)."""
    inv = ctx.invocation
    while inv is not None and getattr(inv, "in_broker", False):
        outer = getattr(inv, "outer", None)
        inv = None if outer is None else outer.invocation
    return inv


def _to_a_tool(ctx: SyscallContext) -> bool:
    """Whether the answer goes to a sandboxed tool (`_tool_answered`)."""
    return _tool_answered(ctx) is not None


def _sendable(ctx: SyscallContext, answer: Any, syscall: str, what: str,
              give_back: Callable[[], str] | None = None) -> None:
    """`InvalidArgument` for a child's end, a message or an event a sandboxed tool could not
    be sent (past the bound of its sandbox's channel: a frame's depth or size for Deno, the
    message size for WASM), so the outcome records the failure the tool gets, never an `ok`
    of a delivery that did not happen. What the call took from a queue goes back first
    (`give_back`, which says where): nothing acknowledged is lost (invariant 7)."""
    tool = _tool_answered(ctx)
    if tool is None:
        return
    unsendable = getattr(tool, "unsendable", None) or unframable  # (a frame's)
    why = unsendable(answer)
    if why is None:
        return
    kept = "" if give_back is None else give_back()
    raise InvalidArgument(f"{syscall}: {what} cannot be sent to a tool: {why}{kept}")


def _signal_authority(ctx: SyscallContext, args: dict[str, Any]) -> Decision | None:
    # One's own descendants are one's own lineage; anything else needs a capability.
    decision = None if ctx.services.is_descendant(ctx.pid, args["pid"]) else ctx.check(
        "proc", "signal", str(args["pid"]))
    if args["signal"] == "resume":
        # A pause the operator (or a process above this one) placed is not this one's to lift.
        ctx.services.check_resume(ctx.pid, args["pid"])
    return decision


@syscall(
    "proc.signal",
    doc="Send kill, pause or resume to a descendant (others need proc:signal).",
    args={"pid": PID, "signal": {"enum": list(SIGNALS)}},
    required=("pid", "signal"),
    resource=lambda ctx, a: str(a["pid"]),
    authorize=_signal_authority,
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


EVENT_NAME = {"type": "string", "minLength": 1, "maxLength": 128,
              "pattern": "^[A-Za-z0-9_.:/-]+$"}


@syscall(
    "proc.send",
    doc="Send a message to a process's durable mailbox (needs proc:message on its pid). "
        "Returns once the message is stored.",
    args={"pid": PID, "body": {}},
    required=("pid", "body"),
    kind="proc",
    right="message",
    resource=lambda ctx, a: str(a["pid"]),
)
def proc_send(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> int:
    return ctx.services.send_message(ctx.pid, args["pid"], args["body"], labels=ctx.label)


@syscall(
    "proc.receive",
    doc="Take the oldest message from this process's mailbox, waiting up to timeout seconds "
        "(forever without one): {id, from, body, sent}, or null on timeout.",
    args={"timeout": TIMEOUT},
    waits=True,
    # Safe to run again once recovery has put back what a cut-off receive took (a recorded
    # ok outcome is handed to the planner instead: see `broker.kernel.recovery`).
    idempotent=True,
)
async def proc_receive(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> Any:
    # A tool's receive goes on past a message set aside (one a tool could not be sent), so
    # one such message first in line does not stop the mailbox; the planner's takes it.
    taken = _taken(ctx, await ctx.services.receive_message(
        ctx.pid, args.get("timeout"), ctx.intent_seq, past_aside=_to_a_tool(ctx)))
    _sendable(ctx, taken, "proc.receive", "the message",
              lambda: _set_aside(ctx, "message", ctx.services.set_aside_message(
                  ctx.pid, ctx.intent_seq), "proc.receive", "messages_set_aside"))
    return taken


def _set_aside(ctx: SyscallContext, what: str, ids: list[int], syscall: str, shown: str
               ) -> str:
    """What this call took and could not send was set aside (`ids`): kept where it was in
    line, named by the call's record (`set_aside`), the tool told once (this error), and
    its next call goes on past it: one message (event) first in line does not stop the rest."""
    if not ids:
        return ""
    ctx.outcome_detail["set_aside"] = ids[0]
    return (f"; it is set aside, kept as {what} {ids[0]} (the planner's {syscall} takes it,"
            f" the host sees it: {shown}); a tool's next {syscall} goes on past it")


def _taken(ctx: SyscallContext, taken: Any) -> Any:
    """A message, an event or a child's end as the caller gets it: the labels its sender,
    raiser or child had come off it and onto the caller (`ctx.result_labels`)."""
    if isinstance(taken, dict) and "labels" in taken:
        ctx.result_labels = frozenset(taken.pop("labels"))
    return taken


@syscall(
    "proc.raise",
    doc="Raise a named event that waiting processes (and the host) see (needs proc:message "
        "on event:<name>).",
    args={"name": EVENT_NAME, "data": {}},
    required=("name",),
    kind="proc",
    right="message",
    resource=lambda ctx, a: f"event:{a['name']}",
)
def proc_raise(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> int:
    return ctx.services.raise_event(args["name"], args.get("data"), source=ctx.pid,
                                    labels=ctx.label)


@syscall(
    "proc.wait_event",
    doc="Wait for a named event this process has not seen yet: {id, name, data, source, "
        "raised}, or null on timeout.",
    args={"name": EVENT_NAME, "timeout": TIMEOUT},
    required=("name",),
    kind="proc",
    right="message",
    resource=lambda ctx, a: f"event:{a['name']}",
    waits=True,
    idempotent=True,
)
async def proc_wait_event(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> Any:
    taken = _taken(ctx, await ctx.services.wait_event(
        ctx.pid, args["name"], args.get("timeout"), ctx.intent_seq, past_aside=_to_a_tool(ctx)))
    _sendable(ctx, taken, "proc.wait_event", "the event",
              lambda: _set_aside(ctx, "event", ctx.services.set_aside_event(
                  args["name"], ctx.intent_seq), "proc.wait_event", "events_set_aside"))
    return taken
