"""Reads: what the host and the CLI see of a kernel without changing it (processes, one
process's lineage and capabilities, approval requests, the audit and its verification)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from broker.approvals.closed import ClosedOnChain
from broker.approvals.stored import listed_as_recorded
from broker.kernel.end_result import checked_rows
from broker.store.audit import as_listed
from broker.store.checkpoints import summary

if TYPE_CHECKING:
    from broker.kernel.ports import ReadsNeeds


class Reads:
    def __init__(self, kernel: ReadsNeeds, closed: ClosedOnChain) -> None:
        self.kernel = kernel
        self.closed = closed  # (the queue's: the requests the chain records closed)

    def ps(self) -> list[dict[str, Any]]:
        """The process rows; an ended one its end does not vouch for shown without its
        result, marked `forged` (`end_result.checked_rows`)."""
        return checked_rows(self.kernel.store, self.kernel.store.list_processes())

    def capabilities(self, pid: int) -> list[dict[str, Any]]:
        caps = self.kernel.process(pid).caps
        return [{"handle": handle, **cap.to_wire()} for handle, cap in caps]

    def audit(self, pid: int | None = None) -> list[dict[str, Any]]:
        """The records as listed: a read folded into its call shown as its own line."""
        return [line for r in self.kernel.store.audit_records(pid=pid)
                for line in as_listed(r.to_json())]

    def verify_audit(self) -> tuple[int, list[str]]:
        """(records checked, problems): the hash chain, and that it reaches its anchor."""
        return self.kernel.store.audit_problems()

    def process_info(self, pid: int) -> dict[str, Any]:
        proc = self.kernel.process(pid)
        lineage, current = [], proc.parent
        while current is not None:
            lineage.append(current)
            current = self.kernel.parent_of(current)
        return {"pid": proc.pid, "parent": proc.parent, "lineage": lineage,
                "image": proc.image.name, "version": proc.image.version,
                "state": proc.state.value, "root": proc.root, "cwd": proc.cwd,
                "usage": proc.usage.to_json(), "children": list(proc.children)}

    def checkpoints(self, pid: int, *, stored: bool = False) -> list[dict[str, Any]]:
        """The checkpoints kept of a process to fork from, oldest first (`stored`: without
        loading it, for a process another broker runs)."""
        if stored:
            self.kernel.store.get_process(pid)  # NotFound for an unknown pid
        else:
            self.kernel.process(pid)  # NotFound for an unknown pid
        return [summary(c) for c in self.kernel.store.checkpoint_log(pid)]

    def approvals(self, state: str | None = "pending") -> list[dict[str, Any]]:
        """Approval requests and questions (pending ones by default), oldest first."""
        return listed_as_recorded(self.kernel.store, self.closed, state)
