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
from broker.kernel.builtin_tools import BUILTINS
from broker.kernel.invocation import chain_digest
from broker.syscalls import TABLE, SyscallDef
from broker.syscalls.table import LazySchema

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
    validator: Schema | LazySchema  # (a wrapped builtin's: its syscall's, compiled at first use)
    manifest: tuple[CapSpec, ...] | None
    digest: str  # of the manifests of a top-level call (`Invocation.authority`)
    in_broker: bool  # a builtin: its syscalls' answers stay in the broker (read_commit)
    labels: frozenset[str]  # its code's (a tool registered by a labelled process)
    # A builtin that is exactly one syscall, with that syscall's schema: its arguments are
    # checked once, by that syscall's compiled check, when the tool is called (`validator`
    # is it); the syscall's dispatch then takes them as checked (`Invocation.checked`).
    wraps: SyscallDef | None = None

    @classmethod
    def make(cls, spec: dict[str, Any], validator: Schema, name: str = "") -> ToolPlan:
        manifest = None if spec["manifest"] is None else tuple(
            CapSpec.parse(m) for m in spec["manifest"])
        wraps = _wrapped(name, spec)
        return cls(spec, validator if wraps is None else wraps.validator, manifest,
                   chain_digest(() if manifest is None else (manifest,)),
                   spec["lang"] == "builtin", frozenset(spec.get("labels", ())), wraps)


def _wrapped(name: str, spec: dict[str, Any]) -> SyscallDef | None:
    """The syscall a builtin tool is exactly, when the entry's schema is that syscall's (an
    entry stored by an older broker may hold another: it is then checked as it says, and its
    syscall checks again)."""
    builtin = BUILTINS.get(name) if spec["lang"] == "builtin" else None
    if builtin is None or builtin.syscall is None:
        return None
    wrapped = TABLE[builtin.syscall]
    return wrapped if spec["schema"] == wrapped.schema else None


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
    plan = plans[name] = ToolPlan.make(spec, validator(spec["schema"], name), name)
    return plan
