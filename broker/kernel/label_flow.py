"""Label propagation (`broker.caps.labels`), at the grain the runtime can honestly track.

A syscall's result is labelled by where it came from: the allowing capability's `labels`, the
label rules the kernel was opened with, and what the data was kept with (a file's, an
object's, a message's labels, which the handler reads into `ctx.result_labels`). That label
is joined into whoever made the call: the tool invocation, or the process when its planner
called. An invocation starts with its caller's label (its arguments came from there), and
when it ends, however it ends, its label is joined into its caller: the caller sees its
result, and a sandbox it ran in may keep what it read for the process's next call.

The process's label is raised at once, too, not only when the invocation ends: it only grows,
and it is stored as it grows, before the outcome that raised it is recorded, so a crash
cannot lose it (recovery hands a recorded outcome to the planner without running it again).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from broker.caps.capability import scope_covers
from broker.caps.labels import PUBLIC, LabelRule, Labels
from broker.kernel.label_floor import join_label
from broker.store import SQLiteStore

if TYPE_CHECKING:
    from broker.caps import Decision
    from broker.kernel.invocation import Invocation
    from broker.kernel.process import AgentProcess
    from broker.syscalls import SyscallContext


class LabelFlow:
    def __init__(self, store: SQLiteStore, rules: Iterable[Any] = ()) -> None:
        self.store = store
        self.rules: dict[str, tuple[LabelRule, ...]] = {}
        for rule in map(LabelRule.parse, rules):
            self.rules[rule.kind] = (*self.rules.get(rule.kind, ()), rule)
            # (labels the rules give are in the ceiling a broken chain's reads carry)
            store.note_rule_labels(rule.labels)

    def of_result(self, kind: str | None, resource: str | None, decision: Decision | None,
                  ctx: SyscallContext) -> Labels:
        """The labels of what a call returns."""
        labels = ctx.result_labels
        if decision is not None and decision.labels:
            labels = labels | decision.labels
        rules = self.rules.get(kind) if kind else None
        if rules and resource is not None:
            for rule in rules:
                if scope_covers(kind, rule.scope, resource):  # type: ignore[arg-type]
                    labels = labels | rule.labels
        return labels

    def absorb(self, kind: str | None, resource: str | None, decision: Decision | None,
               ctx: SyscallContext) -> Labels:
        """Label a call's result and join it into its caller; returns the result's labels."""
        labels = self.of_result(kind, resource, decision, ctx)
        if labels:
            inv = ctx.invocation
            if inv is not None and not labels <= inv.label:
                inv.label = inv.label | labels
            self.raise_process(ctx.process, labels)  # type: ignore[arg-type]
        return labels

    def raise_process(self, proc: AgentProcess, labels: Labels) -> None:
        join_label(self.store, proc, labels)

    def enter(self, proc: AgentProcess, inv: Invocation, code: Labels = PUBLIC) -> None:
        """A new invocation starts with its caller's label, its process's (a warm sandbox may
        hold what any call of the process saw) and its code's (a tool registered by a labelled
        process)."""
        inv.label = (inv.caller.label if inv.caller is not None else PUBLIC) | proc.label | code

    def leave(self, proc: AgentProcess, inv: Invocation) -> None:
        """An invocation ended: its caller has seen (or may yet see) what it saw."""
        if inv.caller is not None:
            inv.caller.label = inv.caller.label | inv.label
        else:
            self.raise_process(proc, inv.label)

    def start_child(self, child: AgentProcess, labels: Labels = PUBLIC) -> None:
        """A child (a spawn, a fork) starts with the label of what made it."""
        if labels:
            self.raise_process(child, labels)
