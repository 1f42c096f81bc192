"""Spawning and grants: a new process (top-level, a child, or a fork of a checkpoint) and the
capabilities it is given, each checked before anything is written: within what its image
declares, and, for a child, a narrowing of one its parent holds (uses split, never
multiplied). Revoking a grant takes back everything derived from it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from broker.caps import Capability, CapSpec, normalize
from broker.errors import NotCapable
from broker.kernel import recovery
from broker.kernel.history import History
from broker.kernel.image import AgentImage
from broker.kernel.process import AgentProcess
from broker.lifecycle import State
from broker.planner import Planner, action_from_json
from broker.planner.factory import planner_from_settings
from broker.store import AuditRecord
from broker.syscalls.obj import own_namespace

if TYPE_CHECKING:
    from broker.kernel.ports import SpawnerNeeds


class Spawner:
    def __init__(self, kernel: SpawnerNeeds) -> None:
        self.kernel = kernel

    def spawn(
        self,
        image: str | AgentImage,
        *,
        caps: Iterable[CapSpec | Mapping[str, Any] | str] = (),
        planner: Planner | None = None,
        root: str = "/",
        args: Any = None,
    ) -> int:
        """Start a top-level process. The host is the root of authority: it grants `caps`
        directly, but never more than the image declares it needs."""
        specs = [CapSpec.parse(c) for c in caps]
        proc = self._create(self._image(image), None, specs, planner=planner,
                            root=normalize(root).text, args=args)
        return proc.pid

    def spawn_child(self, parent: int, image: str, caps: list[CapSpec], *, root: str | None,
                    args: Any) -> int:
        """`proc.spawn`: a child whose every capability narrows one the parent holds."""
        proc = self.kernel.process(parent)
        child_root = proc.root if root is None else normalize(
            root, root=proc.root, cwd=proc.cwd).text
        return self._create(self._image(image), proc, caps, planner=None, root=child_root,
                            args=args).pid

    def _image(self, image: str | AgentImage) -> AgentImage:
        return image if isinstance(image, AgentImage) else self.kernel.images.image(image)

    def _create(self, image: AgentImage, parent: AgentProcess | None, specs: list[CapSpec], *,
                planner: Planner | None, root: str, args: Any,
                start: bool = True) -> AgentProcess:
        # Everything is checked before anything is written: a refused spawn leaves no trace
        # but its audit record.
        sources, demand = self._grant_sources(image, parent, specs)
        pid = self.kernel.store.insert_process(
            parent=parent.pid if parent else None, image=image.name, version=image.version,
            state=State.CREATED, root=root, cwd=root)
        proc = AgentProcess(pid, parent.pid if parent else None, image, self.kernel.caps.table(pid),
                            root=root, cwd=root, args=args, started_at=self.kernel.clock.now())
        proc.history = History(self.kernel.store, pid)
        self.kernel.admit(proc)
        if parent:
            self.kernel.lineage.born(proc)
        entries = [self.kernel.caps.grant(pid, spec, parent=src.id if src else None)
                   for spec, src in zip(specs, sources or [None] * len(specs), strict=True)]
        carved = [self.kernel.caps.transfer(self.kernel.caps.get(cap_id), uses)
                  for cap_id, uses in demand.items()]
        if parent:
            entries += self.kernel.caps.inherit_denies(parent.pid, pid)
            parent.children.append(pid)
        entries.append(self.kernel.caps.grant(pid, CapSpec("obj", own_namespace(pid),
                                                           frozenset({"read", "write"}))))
        self.kernel.store.insert_capabilities(entries, carved)
        proc.tools = self.kernel.tools.image_tools(image)
        self.kernel.events.emit(pid, "spawn", image=image.name, version=image.version,
                                parent=proc.parent, caps=[c.to_wire() for _, c in entries])
        self.kernel.move(proc, State.RUNNABLE)
        if parent:
            self.kernel.holds.inherit(parent, proc)
        if start:
            proc.planner = planner or self.planner_for(image, pid)
            if proc.planner is not None:
                self.kernel.scheduler.start(proc)
        return proc

    def _grant_sources(self, image: AgentImage, parent: AgentProcess | None,
                       specs: list[CapSpec]) -> tuple[list[Capability], dict[str, int]]:
        """Check that a spawn may grant `specs`: each within what the image declares and
        (for a child) a narrowing of one of the parent's capabilities, counted uses split,
        never multiplied. Returns the parent capabilities they derive from and the uses each
        gives away; raises `NotCapable` for an escalation."""
        for spec in specs:
            if not image.allows(spec):
                raise NotCapable(f"image {image.name} does not declare a need for "
                                 f"{spec.kind}:{spec.scope}")
        sources = [self.kernel.caps.covering(parent.pid, s) for s in specs] if parent else []
        demand: dict[str, int] = {}
        for spec, source in zip(specs, sources, strict=False):
            if source.uses is not None:
                demand[source.id] = demand.get(source.id, 0) + (spec.uses or 0)
        for source in sources:
            if source.id in demand and demand[source.id] > (source.uses or 0):
                raise NotCapable(f"escalation: capability {source.scope} has only "
                                 f"{source.uses} uses left to give")
        return sources, demand

    def check_spawn(self, parent: int, image: str, caps: list[CapSpec]) -> None:
        """The check of `proc.spawn`: an escalation is a denial in the audit, and a spawn past
        the live-descendants bound a refusal, before anything happens."""
        proc = self.kernel.process(parent)
        self._grant_sources(self._image(image), proc, caps)
        self.kernel.lineage.check(proc)

    def planner_for(self, image: AgentImage, pid: int) -> Planner | None:
        """The embedder's planner for this process (given its checkpointed planner state, if
        it can take it), else the one the image's settings describe."""
        planner = self.kernel.planners(image, pid) if self.kernel.planners else None
        if planner is None:
            return self._planner_from_image(image, pid)
        state = recovery.planner_state(self.kernel.store, pid)
        restore = getattr(planner, "restore", None)
        if restore is not None and state is not None:
            restore(state)
        return planner

    def _planner_from_image(self, image: AgentImage, pid: int) -> Planner | None:
        """The planner the image's settings describe (scripted, openai, anthropic), resumed
        from the process's last checkpointed planner state."""
        proc = self.kernel.loaded(pid)
        return planner_from_settings(
            image.planner, image=image.name, tools=lambda: self.kernel.tools.list_tools(pid),
            args=proc.args if proc else None,
            state=recovery.planner_state(self.kernel.store, pid) if image.planner else None)

    def fork(self, pid: int, *, caps: Iterable[CapSpec | Mapping[str, Any] | str] | None = None,
             planner: Planner | None = None) -> int:
        """A new process from `pid`'s last checkpoint: same image, history and cwd, a new pid
        whose parent is `pid`, and capabilities attenuated exactly as for a spawn (by default,
        the same capabilities, each derived from the source's own)."""
        source = self.kernel.process(pid)
        checkpoint = self.kernel.store.checkpoint(pid)
        step = checkpoint["step"] if checkpoint else 0
        if caps is None:
            specs = [CapSpec(c.kind, c.scope, c.rights, c.effect, c.uses, c.expires)
                     for c in source.caps.caps() if c.args_hash is None and c.uses != 0
                     and c.effect != "deny" and c.scope != own_namespace(pid)]
        else:
            specs = [CapSpec.parse(c) for c in caps]
        child = self._create(source.image, source, specs, planner=None, root=source.root,
                             args=source.args, start=False)
        self.kernel.store.copy_history(pid, child.pid, step)
        # The planner first, so that it resumes from the checkpointed planner state (a model
        # planner's conversation) and the child's first checkpoint holds that state.
        child.planner = planner or self.planner_for(child.image, child.pid)
        recovery.restore(self.kernel.store, child, checkpoint)
        if checkpoint and checkpoint["state"]["pending"]:
            child.rerun = action_from_json(checkpoint["state"]["pending"])
        child.cwd = source.cwd if checkpoint is None else checkpoint["state"]["cwd"]
        self.kernel.store.update_process(child.pid, cwd=child.cwd)
        recovery.save(self.kernel.store, child, len(child.history))
        self.kernel.events.emit(child.pid, "fork", source=pid, step=step)
        if child.planner is not None:
            self.kernel.scheduler.start(child)
        return child.pid

    def revoke(self, cap_id: str) -> list[Capability]:
        """Revoke a capability and everything derived from it."""
        gone = self.kernel.caps.revoke(cap_id)
        self.kernel.store.delete_capabilities([c.id for c in gone])
        self.kernel.store.append_audit(AuditRecord(
            phase="admin", syscall="caps.revoke", resource=cap_id,
            detail={"revoked": [c.id for c in gone]}))
        return gone
