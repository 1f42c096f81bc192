"""`proc.exec`: a process replaces its image with another one.

It stays the same process: its pid, parent and children, mailbox, Object Memory (its own
namespace, `proc/<pid>`), usage and step history stay. What changes:

* its capabilities narrow to what the new image declares: one inside a declared need is kept;
  any other is replaced by its intersections with the needs (derived from it, so revoking it
  still reaches them; a counted one's uses move, never multiply) and retired (kept with no
  uses while anything derives from it, else deleted). Deny rules stay, and the new image's
  declared restrictions are added. Nothing is ever widened;
* its tool table becomes the new image's (tools registered at run time are gone);
* its planner is rebuilt from the new image (or the embedder's factory), fresh: it sees the
  history from the step after the exec on;
* sandboxes that served it before never serve it after (`Invocation.authority`).

Crash consistency: the checkpoint before is the step's own (the scheduler writes it with the
exec as the pending action), or one written here when no step is in flight. Everything the
exec changes is then written in one transaction together with the checkpoint after
(`switch_image`), so a crash leaves the process wholly on one side. Running the exec again
after a crash converges on the same state (narrowing what is already narrow keeps it), so
recovery may run an interrupted exec step again. The outcome record names both images.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from broker.caps import Capability, CapSpec
from broker.caps.narrowing import narrow_caps
from broker.caps.table import new_handle
from broker.kernel import recovery
from broker.kernel.image import AgentImage
from broker.syscalls.obj import own_namespace

if TYPE_CHECKING:
    from broker.kernel.ports import ExecNeeds
    from broker.kernel.process import AgentProcess


def _label(image: AgentImage) -> str:
    return f"{image.name}:{image.version}"


class Exec:
    def __init__(self, kernel: ExecNeeds) -> None:
        self.kernel = kernel

    def check(self, pid: int, image: str, version: str | None) -> AgentImage:
        """The image to become (`NotFound` if there is none) of a live process."""
        self.kernel.require_live(self.kernel.process(pid))
        return self.kernel.images.image(image, version)

    def exec(self, pid: int, image: str, version: str | None, *, args: Any = None,
             new_args: bool = False) -> dict[str, Any]:
        kernel = self.kernel
        proc = kernel.process(pid)
        kernel.require_live(proc)
        new, old = kernel.images.image(image, version), proc.image
        latest = kernel.store.checkpoint(pid)
        in_step = latest is not None and latest["state"].get("pending") is not None
        if not in_step:  # the checkpoint before (a step in flight wrote its own)
            recovery.save(kernel.store, proc, len(proc.history))
            latest = kernel.store.checkpoint(pid)
        # The new planner sees the history from the step after this one.
        history_from = len(proc.history) + (1 if in_step else 0)
        granted, retired, deleted = self._narrowing(proc, new)
        if new_args:
            proc.args = args
        state = recovery.capture(proc, None)
        state.update(image=[new.name, new.version], planner=None, history_from=history_from,
                     pending=latest["state"].get("pending") if latest else None)
        if in_step and latest is not None:
            state["audit_from"] = latest["state"].get("audit_from", 0)
        checkpoint = kernel.store.switch_image(
            pid, new.name, new.version, granted=granted,
            retired=[replace(c, uses=0) for c in retired], deleted=[c.id for c in deleted],
            step=len(proc.history), state=state)
        # Durable: now the broker's memory follows.
        for handle, cap in granted:
            kernel.caps.load(cap, handle)
        for cap in [*retired, *deleted]:
            kernel.caps.retire(cap)
        proc.image, proc.tools = new, kernel.tools.image_tools(new)
        proc.history_from, proc.era = history_from, proc.era + 1
        proc.planner = kernel.spawner.planner_for(new, pid, fresh=True)
        if proc.planner is not None and proc.scope is None:
            kernel.scheduler.start(proc)  # it was host-driven: now its planner drives it
        # (Durably: the switch is made; a store that refuses the event now must not make
        # the call a Conflict, "nothing done", for an exec that happened: the flush keeps it.)
        kernel.events.emit_durably(pid, "exec", old=_label(old), new=_label(new))
        return {"pid": pid, "from": _label(old), "to": _label(new), "checkpoint": checkpoint,
                "caps": [c.to_wire() for _, c in proc.caps],
                "retired": [c.id for c in [*retired, *deleted]]}

    def _narrowing(self, proc: AgentProcess, image: AgentImage
                   ) -> tuple[list[tuple[str, Capability]], list[Capability], list[Capability]]:
        """(capabilities to add, to keep with no uses, to delete) for `proc` to hold only
        what `image` declares (its own namespace stays: Object Memory is kept)."""
        own = own_namespace(proc.pid)
        held = [c for c in proc.caps.caps() if not (c.kind == "obj" and c.scope == own)]
        plan = narrow_caps(held, image.needs)
        granted = [(new_handle(), Capability(
            kind=spec.kind, scope=spec.scope, rights=spec.rights, effect=spec.effect,
            uses=spec.uses, expires=spec.expires, policy=spec.policy, owner=proc.pid,
            parent=source.id,
            args_hash=source.args_hash))  # a grant bound to exact arguments stays bound
            for spec, source in plan.derived]
        rules = {CapSpec(c.kind, c.scope, c.rights, "deny", None, c.expires)
                 for c in held if c.effect == "deny"}
        granted += [(new_handle(), Capability(
            kind=d.kind, scope=d.scope, rights=d.rights, effect="deny", expires=d.expires,
            owner=proc.pid)) for d in image.denies if d not in rules]
        sources = {source.id for _, source in plan.derived}
        retired = [c for c in plan.retired
                   if c.id in sources or self.kernel.caps.derives_from(c.id)]
        deleted = [c for c in plan.retired if c not in retired]
        return granted, retired, deleted
