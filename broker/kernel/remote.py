"""A process another broker runs (one broker of many over a PostgreSQL store), as the
embedding API sees it: its controls go the way `libos pause/resume/kill` go, as a request in
the store that the broker running the process applies and audits (told at once by NOTIFY,
polled as the fallback); its reads come from the store. Approvals and answers need nothing
here: the queue writes them into the store for the broker whose call waits.

What cannot be forwarded stays `HeldElsewhere` (a `Conflict` naming the broker): a tool call
(its sandbox lives on that broker's host), attaching a planner, a message to its mailbox."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import trio

from broker.approvals.stored import bounded_who
from broker.errors import Conflict, LibosError
from broker.kernel.end_result import forged_result, refuse_forged, row_state
from broker.kernel.leasing import HeldElsewhere
from broker.lifecycle import LIVE, State

if TYPE_CHECKING:
    from broker.kernel.ports import HasLeasing, ReadsNeeds

    class RemoteNeeds(ReadsNeeds, HasLeasing, Protocol):
        """Store, process lookup, and whether this broker is one of many."""

POLL = 0.1  # how often a wait on another broker's process looks at the store
MAX_REASON = 1000
_LIVE = {state.value for state in LIVE}


class Remote:
    def __init__(self, kernel: RemoteNeeds) -> None:
        self.kernel = kernel
        self._forged: dict[int, str] = {}  # an ended process whose row's result is forged

    def holder(self, pid: int) -> str | None:
        """The other broker that runs `pid` now; None when this broker acts on it itself
        (it runs it, or takes it as `Kernel.process` does, or it has ended)."""
        if not self.kernel.leasing.active:
            return None
        try:
            self.kernel.process(pid)
        except HeldElsewhere as exc:
            return exc.holder
        except LibosError:
            pass  # (an unknown pid: the verb's own path refuses it, on the record)
        return None

    def control(self, verb: str, pid: int, *, who: str, reason: str | None = None) -> None:
        """Leave `verb` (pause, resume, kill) for the broker that runs `pid`: it applies it
        within a moment, audited there under `who` (marked `via: store`: a claim), if it
        trusts this broker's key, which signs the request (`broker.store.control_sig`)."""
        arg: dict[str, Any] = {"who": bounded_who(who)}
        if reason is not None:
            arg["reason"] = str(reason)[:MAX_REASON]
        self.kernel.store.add_control(verb, pid, arg)

    def ended(self, pid: int) -> bool:
        """Whether the store has process `pid` ended: its status is then read from its row,
        without loading it (one ended for an image the chain refuses cannot be loaded)."""
        return self.kernel.store.get_process(pid)["state"] not in _LIVE

    async def wait(self, pid: int, timeout: float | None) -> dict[str, Any]:
        """`Kernel.wait` for a process another broker runs: its end, as the store has it."""
        row = self.kernel.store.get_process(pid)
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            while row["state"] in _LIVE:
                await trio.sleep(POLL)
                row = self.kernel.store.get_process(pid)
        if pid in self._forged:
            refuse_forged(self._forged[pid])
        forged = forged_result(self.kernel.store, pid, row_state(pid, row["state"]),
                               row["result"], row["exit_code"])
        if forged is not None:  # (recorded once: this broker keeps it)
            self._forged[pid] = forged
            refuse_forged(forged)
        if row["state"] in _LIVE:  # (timed out: a live row's result and code are a
            return {"pid": pid, "state": row["state"], "reason": row["reason"],  # writer's,
                    "exit_code": None, "result": None}  # nothing binds them: red team 16)
        return {"pid": pid, "state": row["state"], "reason": row["reason"],
                "exit_code": row["exit_code"], "result": row["result"]}

    def process_info(self, pid: int) -> dict[str, Any]:
        store = self.kernel.store
        row = store.get_process(pid)
        lineage, current = [], row["parent"]
        while current is not None:
            if current == pid or current in lineage:  # rows anyone may write: no spawn loops
                raise Conflict(f"process {pid}'s lineage loops at {current} in the store")
            lineage.append(current)
            current = store.get_process(current)["parent"]
        lease = store.lease_of(pid)
        return {"pid": pid, "parent": row["parent"], "lineage": lineage, "image": row["image"],
                "version": row["version"], "state": State(row["state"]).value,
                "root": row["root"], "cwd": row["cwd"], "usage": row["usage"],
                "children": store.children_of(pid),
                "broker": lease.holder if lease is not None else None}

    def capabilities(self, pid: int) -> list[dict[str, Any]]:
        self.kernel.store.get_process(pid)  # NotFound for an unknown pid
        return [{"handle": handle, **cap.to_wire()}
                for handle, cap in self.kernel.store.load_capabilities(live=True)
                if cap.owner == pid]
