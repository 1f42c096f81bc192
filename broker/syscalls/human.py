"""human: a typed question to a person, answered through the approval queue's front ends."""

from __future__ import annotations

from typing import Any

from broker.syscalls.context import SyscallContext
from broker.syscalls.table import syscall

MAX_QUESTION = 4000
MAX_WAIT = 7 * 24 * 3600.0
DEFAULT_PERSON = "operator"


@syscall(
    "human.ask",
    doc="Ask a person a question and wait for the answer. With `choices`, the answer is one "
        "of them; with `schema` (JSON Schema), it is JSON that fits it; otherwise text. `to` "
        "names who is asked (the resource of the human:ask capability, default 'operator'). "
        "Declined or unanswered by `timeout` seconds: ApprovalDenied.",
    args={
        "question": {"type": "string", "minLength": 1, "maxLength": MAX_QUESTION},
        "schema": {"type": "object"},
        "choices": {"type": "array", "minItems": 1, "maxItems": 64},
        "to": {"type": "string", "minLength": 1, "maxLength": 256},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_WAIT},
    },
    required=("question",),
    kind="human",
    right="ask",
    resource=lambda ctx, a: a.get("to", DEFAULT_PERSON),
    blocking=True,
)
async def human_ask(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> Any:
    return await ctx.services.ask_human(ctx, args, proof.resource)
