"""tool: the process's tool table — list, call, and register tools at run time."""

from __future__ import annotations

from typing import Any

from broker.caps import CapSpec, Decision
from broker.errors import NotCapable
from broker.syscalls.context import SyscallContext
from broker.syscalls.table import NAME, syscall

LANGS = ("ts", "wat", "wasm", "python")
TOOL_NAME = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"}


@syscall("tool.list", idempotent=True,
         doc="The tools this process can call: [{name, lang, description, schema}].")
def tool_list(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> list[dict[str, Any]]:
    return ctx.services.list_tools(ctx.pid)


def _call_authority(ctx: SyscallContext, args: dict[str, Any]) -> Any:
    # A tool in the process's table grants nothing by itself, so calling it needs no
    # capability; but a calling tool's manifest may still narrow which tools it reaches.
    if ctx.manifests:
        return ctx.check("tool", "call", args["name"])
    return None


def call_in_shape(name: Any) -> bool:
    """A `tool.call` map the kernel builds itself, `{"name": name, "args": args}` (a host's
    `Kernel.call_tool`, a planner's step), is of `tool.call`'s schema when `name` is (`args`
    may be anything there; the tool's own schema checks it): the dispatcher need not check
    it again (`checked=`). Any other name is checked, refused and recorded as ever."""
    return type(name) is str and 0 < len(name) <= NAME["maxLength"]


@syscall(
    "tool.call",
    doc="Call a tool of this process's table with arguments (validated by its schema).",
    args={"name": NAME, "args": {}},
    required=("name",),
    resource=lambda ctx, a: a["name"],
    authorize=_call_authority,
    blocking=True,
    keep_args=True,
)
async def tool_call(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> Any:
    spec = ctx.process.tools.get(args["name"])
    if spec is not None and spec.get("hash"):
        # The code that runs, in the outcome's record: replay runs what the chain says ran,
        # whatever the store says the name stands for later (an image's tools are not in it).
        ctx.outcome_detail["code"] = {"lang": spec["lang"], "hash": spec["hash"]}
    return await ctx.services.invoke_tool(ctx.pid, args["name"], args.get("args", {}),
                                          caller=ctx.invocation,
                                          intent=ctx.held_call or ctx.intent_seq, outer=ctx)


def _register_authority(ctx: SyscallContext, args: dict[str, Any]) -> Decision:
    """tool:register for the language, and a manifest that only narrows: each entry within a
    capability the process holds, and within the manifests of the tools calling (a tool may
    not register one that could do more than itself, for the planner to call later)."""
    decision = ctx.check("tool", "register", args["lang"])
    for spec in (CapSpec.parse(m) for m in args.get("manifest") or ()):
        ctx.process.caps.covering(spec)
        for manifest in ctx.manifests:
            if not any(spec.within(m) for m in manifest):
                raise NotCapable(f"escalation: the manifest entry {spec.kind}:{spec.scope} is "
                                 f"outside the manifest of the calling tool")
    return decision


@syscall(
    "tool.register",
    doc="Register a tool written at run time (needs tool:register for its language). The "
        "source is stored content-addressed; an optional manifest narrows its authority. A "
        "name the process has already is Conflict unless replace is true.",
    args={
        "name": TOOL_NAME,
        "lang": {"enum": list(LANGS)},
        "source": {},
        "description": {"type": "string", "maxLength": 4096},
        "schema": {"type": "object"},
        "manifest": {"type": "array", "maxItems": 64, "items": {"type": ["object", "string"]}},
        "replace": {"type": "boolean"},
    },
    required=("name", "lang", "source"),
    kind="tool",
    right="register",
    resource=lambda ctx, a: a["lang"],
    authorize=_register_authority,
    blocking=True,
    fresh_answer=True,  # (`ToolTable.register_tool`'s dict, made for this call)
)
async def tool_register(ctx: SyscallContext, args: dict[str, Any], proof: Any) -> dict[str, Any]:
    # A tool's source is data its registrant wrote: what runs it takes on the label.
    # (`call`: taken back if its outcome's commit fails, `SyscallContext.on_unrecorded`.)
    return await ctx.services.register_tool(ctx.pid, args, labels=ctx.label,
                                            registrant=ctx.manifests, call=ctx)
