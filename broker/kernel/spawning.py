"""Spawning and grants: a new process (top-level, a child, or a fork of a checkpoint) and the
capabilities it is given, each checked before anything is written: within what its image
declares, and, for a child, a narrowing of one its parent holds (uses split, never
multiplied). Revoking a grant takes back everything derived from it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from broker.caps import Capability, CapSpec, normalize
from broker.caps.capability import scope_within
from broker.caps.labels import inherited_sources
from broker.errors import NotCapable, NotFound
from broker.kernel import recovery
from broker.kernel.faults import STORE_FAULTS
from broker.kernel.history import History
from broker.kernel.host_acts import host_record, refused
from broker.kernel.image import AgentImage
from broker.kernel.process import AgentProcess
from broker.lifecycle import State
from broker.planner import CallTool, Planner
from broker.planner.base import action_as_recorded
from broker.planner.factory import planner_from_settings
from broker.store.capvouch import CAP_OLDER, vouch_for
from broker.store.ends import end_record
from broker.syscalls.obj import own_namespace

if TYPE_CHECKING:
    from broker.kernel.ports import SpawnerNeeds

# What a spawn's check found: the parent capability each grant derives from (None for a
# top-level grant or a deny rule), and the uses it gives away from each.
Checked = tuple[list[Capability | None], dict[str, int]]


# Builds the planner of a process (None: the one its image's settings describe).
PlannerFactory = Callable[[AgentImage, int], Planner | None]


def dead_rights(spec: CapSpec, held: list[CapSpec]) -> tuple[CapSpec, set[str]] | None:
    """A permanent deny rule among `held` that covers the whole scope of `spec` for some of
    its rights, and those rights: a grant of them could never be used."""
    if spec.effect == "deny":
        return None
    for rule in held:
        if (rule.effect == "deny" and rule.expires is None and rule.uses is None
                and getattr(rule, "args_hash", None) is None and rule.kind == spec.kind
                and spec.rights & rule.rights and scope_within(spec.kind, spec.scope, rule.scope)):
            return rule, set(spec.rights & rule.rights)
    return None


def refuse_dead_grants(specs: list[CapSpec], held: list[CapSpec]) -> None:
    """A child carries its parent's deny rules (and those it is granted): a grant one of them
    covers would be listed as the child's and never work, so the spawn is refused, saying
    which rule."""
    rules = held + [s for s in specs if s.effect == "deny"]
    for spec in specs:
        dead = dead_rights(spec, rules)
        if dead is not None:
            rule, rights = dead
            where = f" ({rule.id})" if isinstance(rule, Capability) else " (in this grant)"
            raise NotCapable(
                f"{spec.kind}:{spec.scope}:{','.join(sorted(rights))} is covered by the deny "
                f"rule {rule.kind}:{rule.scope}:{','.join(sorted(rule.rights))}{where} the "
                f"child would carry: it could never be used")


class Spawner:
    def __init__(self, kernel: SpawnerNeeds) -> None:
        self.kernel = kernel
        # The embedder's planner factories for what a process spawns, by that process (given
        # per spawn; in memory: after a restart the kernel's own factory builds them all).
        self._child_planners: dict[int, PlannerFactory] = {}

    def spawn(
        self,
        image: str | AgentImage,
        *,
        caps: Iterable[CapSpec | Mapping[str, Any] | str] = (),
        planner: Planner | None = None,
        root: str = "/",
        args: Any = None,
        children: PlannerFactory | None = None,
    ) -> int:
        """Start a top-level process. The host is the root of authority: it grants `caps`
        directly, but never more than the image declares it needs (a deny rule narrows, so it
        needs no declared need). Recorded in the chain with every capability granted.
        `children` builds the planners of the processes it spawns (and they spawn), in this
        broker."""
        name = image.name if isinstance(image, AgentImage) else image
        with refused(self.kernel.store, "host.spawn", resource=name, image=name):
            specs = [CapSpec.parse(c) for c in caps]
            chosen, root = self._image(image), normalize(root).text
            checked = self._grant_sources(chosen, None, specs)
        proc = self._create(chosen, None, specs, planner=planner, root=root, args=args,
                            checked=checked, act=("host.spawn", {}))
        if children is not None:
            self._child_planners[proc.pid] = children
        return proc.pid

    def spawn_child(self, parent: int, image: str, caps: list[CapSpec], *, root: str | None,
                    args: Any, labels: frozenset[str] = frozenset(),
                    vouch: dict[str, Any] | None = None) -> int:
        """`proc.spawn`: a child whose every capability narrows one the parent holds, with
        the label of the call that made it (its arguments came from there). `vouch`: its
        outcome's detail, given the digest of each row granted (`broker.store.capvouch`)."""
        proc = self.kernel.process(parent)
        # Checked live, then killed before this ran (a threaded call's spawn, checked on its
        # worker thread, runs here after a hop to trio's): no child of a dead parent.
        self.kernel.require_live(proc)
        child_root = proc.root if root is None else normalize(
            root, root=proc.root, cwd=proc.cwd).text
        return self._create(self._image(image), proc, caps, planner=None, root=child_root,
                            args=args, labels=labels | proc.label, vouch=vouch).pid

    def _image(self, image: str | AgentImage) -> AgentImage:
        return image if isinstance(image, AgentImage) else self.kernel.images.image(image)

    def _create(self, image: AgentImage, parent: AgentProcess | None, specs: list[CapSpec], *,
                planner: Planner | None, root: str, args: Any, start: bool = True,
                checked: Checked | None = None,
                act: tuple[str, dict[str, Any]] | None = None,
                labels: frozenset[str] = frozenset(),
                prepare: Callable[[AgentProcess], None] | None = None,
                vouch: dict[str, Any] | None = None) -> AgentProcess:
        """`act`: a host act (its record's name and detail), recorded in the transaction that
        grants the capabilities. `prepare`: what else the process needs stored before that
        transaction (a fork's history and checkpoint): a failure there undoes the spawn."""
        # Everything is checked before anything is written: a refused spawn leaves no trace
        # but its audit record.
        sources, demand = checked or self._grant_sources(image, parent, specs)
        if parent:  # what the parent's capabilities say of the data, the child's say too
            held = parent.caps.caps()
            specs = [_with_sources(spec, held) for spec in specs]
        pid = self.kernel.store.insert_process(
            parent=parent.pid if parent else None, image=image.name, version=image.version,
            state=State.CREATED, root=root, cwd=root)
        proc = AgentProcess(pid, parent.pid if parent else None, image, self.kernel.caps.table(pid),
                            root=root, cwd=root, args=args, started_at=self.kernel.clock.now())
        originals = [self.kernel.caps.get(cap_id) for cap_id in demand]
        try:
            proc.history = History(self.kernel.store, pid)
            self.kernel.labels.start_child(proc, labels)
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
            # The restrictions its image declares (the deny rules of whoever made the image).
            entries += [self.kernel.caps.grant(pid, rule) for rule in image.denies]
            entries.append(self.kernel.caps.grant(pid, CapSpec("obj", own_namespace(pid),
                                                               frozenset({"read", "write"}))))
            if parent:  # held as its parent is: stored now, so never running free
                self.kernel.holds.inherit(parent, proc)
            if prepare is not None:
                prepare(proc)
            # Its move to runnable (paused, if held) is written with its grants: a spawn is
            # stored whole (its grants, their record, a process that runs) or not at all.
            runnable = (pid, self.kernel.row_after(proc, State.PAUSED, "paused") if proc.holds
                        else self.kernel.row_after(proc, State.RUNNABLE, None))
            if act is None:  # a child's grants: its `proc.spawn` outcome vouches for them
                assert parent is not None  # (and a record here names the uses handed on)
                self.kernel.store.hand_on(parent.pid, entries, carved, runnable)
                if vouch is not None:
                    vouch_for(vouch, entries)
            else:
                record = host_record(
                    act[0], pid=pid, resource=image.name, image=image.name, version=image.version,
                    root=root, **act[1], caps=[c.to_wire() for _, c in entries])
                if self.kernel.older_processes:  # the first to carry digests names them
                    record.detail[CAP_OLDER] = self.kernel.older_processes
                self.kernel.store.change_capabilities(record, granted=entries, updated=carved,
                                                      process=runnable)
                self.kernel.older_processes = []
        except BaseException:  # (any error: the store's, or a value it cannot hold)
            self._unmake(proc, parent, originals)
            raise
        # Done and durable: nothing below writes before it returns (its events wait for the
        # flush if the store fails now), so the caller is never told it failed.
        proc.tools = self.kernel.tools.image_tools(image)
        self.kernel.spawned(proc, (pid, "spawn", {
            "image": image.name, "version": image.version, "parent": proc.parent,
            "caps": [c.to_wire() for _, c in entries]}),
            [(State.RUNNABLE, None), *([(State.PAUSED, "paused")] if proc.holds else [])])
        if start:
            proc.planner = planner or self.planner_for(image, pid)
            if proc.planner is not None:
                self.kernel.scheduler.start(proc)
        return proc

    def _unmake(self, proc: AgentProcess, parent: AgentProcess | None,
                originals: list[Capability]) -> None:
        """A spawn whose grants were not stored, after its row was committed: the broker
        forgets the process, its capabilities and the uses it took from its parent's (put
        back as they were, `originals`); its row is ended, with its `proc.end`, so no
        half-made process runs, now or after a restart. (The caller gets a typed error:
        `typed_store_faults`, or the dispatcher's.)"""
        for cap in self.kernel.caps.table(proc.pid).caps():
            self.kernel.caps.revoke(cap.id)  # (in memory only, as they were made)
        for held in originals:
            self.kernel.caps.restore(held)
        if self.kernel.loaded(proc.pid) is proc:
            self.kernel.forget(proc.pid)
            if parent:
                self.kernel.lineage.ended(proc)
        if parent and proc.pid in parent.children:
            parent.children.remove(proc.pid)
        # Its row ends with its `proc.end` (so a row set runnable again is refused), in one
        # transaction. While the store still fails that, its `proc.end` alone now if the
        # chain takes it, and the row with the next commit: a record waiting for that
        # commit would fail every read while the chain fails (DESIGN §9).
        end = {"state": State.KILLED.value, "reason": "its spawn could not be stored",
               "result": None}  # (bound by its `proc.end`: none)
        try:
            self.kernel.store.update_process(proc.pid, **end)
        except STORE_FAULTS:
            with suppress(*STORE_FAULTS):  # (the chain failing too: the row alone, §9)
                self.kernel.store.append_audit(end_record(proc.pid, end))
            self.kernel.store.update_process(proc.pid, defer=True, **end)

    def _grant_sources(self, image: AgentImage, parent: AgentProcess | None,
                       specs: list[CapSpec]) -> Checked:
        """Check that a spawn may grant `specs`: each within what the image declares and
        (for a child) a narrowing of one of the parent's capabilities, counted uses split,
        never multiplied. Returns the parent capabilities they derive from and the uses each
        gives away; raises `NotCapable` for an escalation."""
        for spec in specs:
            if spec.effect != "deny" and not image.allows(spec):
                raise NotCapable(f"image {image.name} does not declare a need for "
                                 f"{spec.kind}:{spec.scope}")
        if parent:
            refuse_dead_grants(specs, parent.caps.caps())
        # A deny rule only narrows: it needs neither a declared need nor a parent's capability.
        sources = [None if s.effect == "deny" else self.kernel.caps.covering(parent.pid, s)
                   for s in specs] if parent else []
        demand: dict[str, int] = {}
        for spec, source in zip(specs, sources, strict=False):
            if source is not None and source.uses is not None:
                demand[source.id] = demand.get(source.id, 0) + (spec.uses or 0)
        for source in filter(None, sources):
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

    def planner_for(self, image: AgentImage, pid: int, *, fresh: bool = False
                    ) -> Planner | None:
        """The embedder's planner for this process (the factory given when a process above it
        was spawned, else the kernel's), given its checkpointed planner state if it can take
        it; else the one the image's settings describe. `fresh`: no state (after an exec)."""
        factory = self._factory_for(pid)
        planner = factory(image, pid) if factory is not None else None
        if planner is None:
            return self._planner_from_image(image, pid, fresh)
        state = None if fresh else recovery.planner_state(self.kernel.store, pid)
        restore = getattr(planner, "restore", None)
        if restore is not None and state is not None:
            restore(state)
        return planner

    def release(self, pids: list[int]) -> None:
        """Ended processes left the kernel's memory, with nothing alive below them: their
        factories go (a fork of one of their line later is built as after a restart)."""
        for pid in pids:
            self._child_planners.pop(pid, None)

    def _factory_for(self, pid: int) -> PlannerFactory | None:
        if self._child_planners:
            current = self.kernel.parent_of(pid)
            while current is not None:
                if current in self._child_planners:
                    return self._child_planners[current]
                current = self.kernel.parent_of(current)
        return self.kernel.planners

    def _planner_from_image(self, image: AgentImage, pid: int, fresh: bool) -> Planner | None:
        """The planner the image's settings describe (scripted, openai, anthropic), resumed
        from the process's last checkpointed planner state."""
        proc = self.kernel.loaded(pid)
        return planner_from_settings(
            image.planner, image=image.name, tools=lambda: self.kernel.tools.list_tools(pid),
            args=proc.args if proc else None,
            state=recovery.planner_state(self.kernel.store, pid)
            if image.planner and not fresh else None)

    def fork(self, pid: int, *, caps: Iterable[CapSpec | Mapping[str, Any] | str] | None = None,
             planner: Planner | None = None, checkpoint: int | None = None,
             who: str = "host") -> int:
        """A new process from one of `pid`'s checkpoints (its latest, or `checkpoint`, a kept
        one's id): that checkpoint's image, history, cwd and planner state, a new pid whose
        parent is `pid`, and capabilities from the source's current table (a revocation since
        that checkpoint stays), attenuated exactly as for a spawn: by default the source's
        capabilities that the image declares, each derived from the source's own. Recorded in
        the chain (`host.fork`: who, the source, the checkpoint, every capability granted)."""
        with refused(self.kernel.store, "host.fork", resource=str(pid), who=who, source=pid,
                     checkpoint=checkpoint):
            source = self.kernel.process(pid)
            if checkpoint is None:
                kept = self.kernel.store.checkpoint(pid)
            else:
                kept = self.kernel.store.logged_checkpoint(pid, checkpoint)
                if kept is None:
                    raise NotFound(f"process {pid} has no kept checkpoint {checkpoint}")
            step = kept["step"] if kept else 0
            image = source.image
            if kept and kept["state"].get("image"):
                image = self.kernel.images.image(*kept["state"]["image"])
            if caps is None:
                held = source.caps.caps()
                specs = [CapSpec(c.kind, c.scope, c.rights, c.effect, c.uses, c.expires,
                                 c.policy)
                         for c in held if c.args_hash is None and c.uses != 0
                         and c.effect != "deny" and c.scope != own_namespace(pid)
                         and dead_rights(c, list(held)) is None]  # what could never work stays
                specs = [s for s in specs if image.allows(s)]
            else:
                specs = [CapSpec.parse(c) for c in caps]
            checked = self._grant_sources(image, source, specs)
        # The label of the state it starts from: the source's now (bound by the chain at its
        # load), joined with a kept checkpoint's; not the checkpoint's alone: checkpoints are
        # not vouched for by the chain, and a writer who drops a label from one keeps its
        # history (red team 28).
        labels = source.label
        if checkpoint is not None and kept is not None:
            labels = labels | frozenset(kept["state"].get("labels", ()))

        def from_checkpoint(child: AgentProcess) -> None:
            """Its history, planner, cwd and first checkpoint, stored before its grants and
            their record: a fork told it failed has none of them."""
            self.kernel.store.copy_history(pid, child.pid, step)
            # The planner first, so that it resumes from the checkpointed planner state (a
            # model planner's conversation) and the child's first checkpoint holds that state.
            child.planner = planner or self.planner_for(child.image, child.pid)
            recovery.restore(self.kernel.store, child, kept)
            if kept and kept["state"].get("pending"):
                # (as its planner chose it: a `CallTool(7)` is refused again when it runs)
                rerun = action_as_recorded(kept["state"]["pending"])
                child.rerun = rerun if isinstance(rerun, CallTool) else None
            child.cwd = source.cwd if kept is None else kept["state"]["cwd"]
            self.kernel.store.update_process(child.pid, cwd=child.cwd)
            recovery.save(self.kernel.store, child, len(child.history))

        child = self._create(image, source, specs, planner=None, root=source.root,
                             args=source.args, start=False, checked=checked, labels=labels,
                             act=("host.fork", {"who": who, "source": pid, "step": step,
                                                "checkpoint": kept.get("id") if kept else None,
                                                # (its label: bound by the chain, red team 11)
                                                **({"labels": sorted(labels)} if labels else {})}),
                             prepare=from_checkpoint)
        self.kernel.events.emit_durably(child.pid, "fork", source=pid, step=step,
                                        checkpoint=kept.get("id") if kept else None)
        if child.planner is not None:
            self.kernel.scheduler.start(child)
        return child.pid

    def revoke(self, cap_id: str) -> list[Capability]:
        """Revoke a capability and everything derived from it: the record and the deletion
        are one transaction."""
        handles: dict[str, str] = {}
        with refused(self.kernel.store, "caps.revoke", resource=cap_id):
            gone = self.kernel.caps.revoke(cap_id, handles)
        ids = [c.id for c in gone]
        try:
            self.kernel.store.change_capabilities(
                host_record("caps.revoke", resource=cap_id, revoked=ids), deleted=ids)
        except STORE_FAULTS:  # not revoked: held again as the store holds them (try again)
            for cap in gone:
                self.kernel.caps.load(cap, handles[cap.id])
            raise
        return gone


def _with_sources(spec: CapSpec, held: list[Capability]) -> CapSpec:
    """`spec` attaching too what the parent's capabilities attach to the data it may reach."""
    extra = inherited_sources(spec.kind, spec.scope, held)
    if extra <= spec.policy.attach:
        return spec
    return replace(spec, policy=replace(spec.policy, attach=spec.policy.attach | extra))
