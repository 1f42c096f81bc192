"""A tool's call plan: what a warm call of one tool of one process needs that does not change
from call to call (its compiled argument check, its parsed manifest and that manifest's
digest, whether it runs in the broker, the labels its code carries).

A plan is kept per process, by tool name, beside the table entry it was made from, and is used
only while that very entry (the same dict object) is still the process's: a tool replaced by
`tool.register`, an image replaced by `proc.exec` or a table rebuilt by recovery is a new entry,
so its next call makes a new plan. Nothing about authority is in a plan: capabilities are
checked on every call, and the sandbox a call runs in is chosen by the invocation's authority,
which adds the process's image era to the digest kept here. Host tools are not planned: their
entry is read live from the kernel's registrations on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from broker.caps import CapSpec
from broker.kernel.invocation import chain_digest

if TYPE_CHECKING:
    from broker.kernel.process import AgentProcess
    from broker.schema import Schema

# Plans kept per process (forgotten all at once past this): each holds a compiled schema (up
# to 256 KiB of generated code and 32K RE2 instructions), and a process may register and call
# any number of tools, so without a bound of its own a plan would keep alive what the kernel's
# bounded caches (`tools.MAX_VALIDATORS`, the schema cache) let go.
MAX_PLANS = 256


@dataclass(frozen=True, slots=True)
class ToolPlan:
    spec: dict[str, Any]  # the table entry it was made from: valid only while it is the one
    validator: Schema
    manifest: tuple[CapSpec, ...] | None
    digest: str  # of the manifests of a top-level call (`Invocation.authority`)
    in_broker: bool  # a builtin: its syscalls' answers stay in the broker (read_commit)
    labels: frozenset[str]  # its code's (a tool registered by a labelled process)

    @classmethod
    def make(cls, spec: dict[str, Any], validator: Schema) -> ToolPlan:
        manifest = None if spec["manifest"] is None else tuple(
            CapSpec.parse(m) for m in spec["manifest"])
        return cls(spec, validator, manifest,
                   chain_digest(() if manifest is None else (manifest,)),
                   spec["lang"] == "builtin", frozenset(spec.get("labels", ())))


def plan_of(proc: AgentProcess, name: str, spec: dict[str, Any],
            validator: Callable[[Any, str], Schema]) -> ToolPlan:
    """The plan of `proc`'s tool `name` whose table entry is `spec`: kept, or made now."""
    kept = proc.plans
    if kept is None or kept[0] is not proc.tools:  # a new table (exec, recovery): none kept
        kept = proc.plans = (proc.tools, {})
    plans = kept[1]
    plan = plans.get(name)
    if plan is not None and plan.spec is spec:
        return plan
    if len(plans) >= MAX_PLANS:
        plans.clear()
    plan = plans[name] = ToolPlan.make(spec, validator(spec["schema"], name))
    return plan
