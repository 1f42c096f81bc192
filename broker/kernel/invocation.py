"""One run of one tool: its durable id, the manifests that narrow it, and what it has spent
(syscalls, output) against its `CallLimits`."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from broker.caps import CapSpec
from broker.errors import LimitExceeded
from sandboxes.base import CallLimits

if TYPE_CHECKING:
    from broker.kernel.held_call import HeldCall
    from broker.syscalls.context import SyscallContext


@dataclass(slots=True)
class Invocation:
    """One run of one tool. Its id is the audit seq of the `tool.call` record that started
    it: durable and unique, so a run can be found (and replayed) from the audit. While that
    record is held (`broker.kernel.held_call.HeldCall`), asking for the id chains it."""

    intent: int | HeldCall
    pid: int
    tool: str
    manifests: tuple[tuple[CapSpec, ...], ...]
    depth: int
    limits: CallLimits
    syscalls: int = 0
    output_bytes: int = 0
    caller: Invocation | None = None
    started: float = field(default_factory=time.monotonic)  # its deadline counts from here
    # Past its syscall cap: every further attempt in its call tree is refused, unrecorded.
    exhausted: bool = False
    era: int = 0  # the process's image era: how many times it had exec'd (in this broker)
    # Its label: its caller's when it started (its arguments came from there), joined with
    # what its syscalls returned (`broker.kernel.labels`).
    label: frozenset[str] = frozenset()
    # A builtin tool's (broker code): what its syscalls answer stays in the broker until
    # this call's outcome is recorded (`broker.kernel.read_commit`).
    in_broker: bool = False
    # `chain_digest(manifests)` when known at its start (a top-level call's, from its tool's
    # plan: `broker.kernel.tool_plans`); else worked out when asked.
    digest: str | None = None
    # A builtin wrapper's arguments, as its one syscall's own schema passed them when the tool
    # was called (`tool_plans`): (that syscall, those very arguments). Its dispatch takes
    # them instead of checking the same arguments against the same schema again.
    checked: tuple[object, object] | None = None
    # Such a wrapper's run: its one syscall's answer is its own, handed on untouched.
    wraps: bool = False
    # A builtin's: the context of the `tool.call` that runs it, whose outcome's commit
    # carries what the builtin's calls deferred; what they would take back if that commit
    # fails goes there (`SyscallContext.on_unrecorded`).
    outer: SyscallContext | None = None
    # A sandboxed tool's: why an answer could not reach it (its sandbox's channel bound,
    # `Sandbox.unsendable`), asked before a taken message, event or end is recorded `ok`.
    unsendable: Callable[[Any], str | None] | None = None

    @property
    def id(self) -> int:
        intent = self.intent
        return intent if type(intent) is int else intent.chained()  # type: ignore[union-attr]

    @property
    def held(self) -> HeldCall | None:
        """Its `tool.call` record, while it is held (not chained yet)."""
        intent = self.intent
        return None if type(intent) is int or intent.seq is not None else intent  # type: ignore[union-attr]

    @classmethod
    def start(cls, id_: int | HeldCall, pid: int, tool: str, manifest: tuple[CapSpec, ...] | None,
              caller: Invocation | None, limits: CallLimits, *, era: int = 0,
              digest: str | None = None) -> Invocation:
        """`digest`: that of `manifest` alone, used when there is no caller."""
        if caller is None:
            return cls(id_, pid, tool, () if manifest is None else (manifest,), 0, limits,
                       era=era, digest=digest)
        manifests = caller.manifests if manifest is None else (*caller.manifests, manifest)
        return cls(id_, pid, tool, manifests, caller.depth + 1, limits, caller=caller, era=era)

    def count_syscall(self) -> None:
        """Count one syscall attempt, allowed or refused, against this call and every call
        above it: a call's `max_syscalls` covers the tools it calls, so nesting cannot
        multiply it. Past a cap: `LimitExceeded`, which ends the call; `quiet` in its detail
        once the cap was crossed before (that attempt was recorded, these need not be)."""
        chain: list[Invocation] = []
        current: Invocation | None = self
        while current is not None:
            if current.exhausted:
                raise LimitExceeded(f"tool {current.tool} made more than "
                                    f"{current.limits.max_syscalls} syscalls",
                                    ends_call=True, quiet=True)
            chain.append(current)
            current = current.caller
        for inv in chain:
            inv.syscalls += 1
            if inv.syscalls > inv.limits.max_syscalls:
                inv.exhausted = True
                raise LimitExceeded(f"tool {inv.tool} made more than "
                                    f"{inv.limits.max_syscalls} syscalls", ends_call=True)

    @property
    def authority(self) -> str:
        """What a sandbox process serving this invocation is bound to for its whole life: the
        process and the whole chain of manifests that narrows it (a nested call's callers'
        included). Two invocations with different effective authority never share a sandbox
        process, so nothing a tool leaves in one can run under another authority. Nor do two
        eras of one process: what an image's tool left in a sandbox never meets the tools of
        the image the process exec'd into."""
        digest = self.digest if self.digest is not None else chain_digest(self.manifests)
        return authority_key(self.pid, self.era, digest)


def authority_of(pid: int, era: int, manifests: tuple[tuple[CapSpec, ...], ...]) -> str:
    """`Invocation.authority` of a call of process `pid` in image era `era` narrowed by
    `manifests` (a registration computes it for the tool's first call: its check runs in the
    sandbox that will serve that call)."""
    return authority_key(pid, era, chain_digest(manifests))


def authority_key(pid: int, era: int, digest: str) -> str:
    return f"{pid}.{era}/{digest}" if era else f"{pid}/{digest}"


@lru_cache(maxsize=1024)
def chain_digest(manifests: tuple[tuple[CapSpec, ...], ...]) -> str:
    """A chain of manifests by its content (remembered: a warm call asks for it each time)."""
    chain = json.dumps([[spec.to_wire() for spec in m] for m in manifests],
                       sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(chain.encode()).hexdigest()[:32]
