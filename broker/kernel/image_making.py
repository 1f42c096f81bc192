"""Images a process makes: registered within its own authority (`image.register`), or committed
from a process's latest checkpoint (`image.commit`, and the host's `Kernel.commit_image`).

What a process may put in an image is decided by the `check_...` methods, which the syscalls'
check step runs (the table's `authorize`, before the intent record); nothing is written until
every part has passed:

* its declared needs lie within what the process holds, and within the manifests of the tools
  it calls from: never more;
* its code tools' manifests narrow what the process holds (and the syscall's check asks for
  `tool:<lang>:register`, as a run-time registration does);
* a model planner only as the process's own image runs one: the same kind, model, server and
  key variable (a planner reaches a server and spends a key outside every capability);
* the object types it defines are new, or already defined exactly so.

The process's deny rules come along as the image's declared restrictions (`denies`), which
every process of the image carries. Versions are kept: the same name with other content is
a new version, the same content the same version.

A committed image carries the source process's tool table (tools registered at run time
too, each by the hash of its stored source, as the audit chain vouches for it), its image's
planner settings, budget and types, and never capabilities: its needs are the source image's
(narrowed, for a process that commits, to what it holds), so a process run from it gets only
what its spawner grants. It records the process and checkpoint it came from, and that
checkpoint is kept (pinned) whatever the retention.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from broker.caps import CapSpec
from broker.caps.narrowing import narrow_needs, within_any
from broker.errors import Conflict, InvalidArgument, NotCapable
from broker.kernel import recovery
from broker.kernel.builtin_tools import builtin_spec
from broker.kernel.image import AgentImage
from broker.planner import action_from_json
from broker.schema import compile_schema
from broker.store.vouch import SPEC_HASH, Tampered, spec_digest
from broker.syscalls.obj import own_namespace

if TYPE_CHECKING:
    from broker.kernel.ports import ImageMakerNeeds
    from broker.kernel.process import AgentProcess

Manifests = tuple[tuple[CapSpec, ...], ...]
# What makes a model planner reach somewhere and spend something: where it connects, with
# which key, for which model.
MODEL_KEYS = ("kind", "model", "base_url", "api_key_env")
PLANNER_KINDS = ("scripted", "openai", "anthropic")


def _wire(spec: CapSpec) -> str:
    return f"{spec.kind}:{spec.scope}:{','.join(sorted(spec.rights))} ({spec.effect})"


def deny_rules(*sources: Iterable[CapSpec]) -> list[CapSpec]:
    """The deny rules among `sources`, each once, as declared restrictions."""
    out: list[CapSpec] = []
    for source in sources:
        for cap in source:
            if cap.effect == "deny":
                rule = CapSpec(cap.kind, cap.scope, cap.rights, "deny", None, cap.expires)
                if rule not in out:
                    out.append(rule)
    return out


class ImageMaker:
    def __init__(self, kernel: ImageMakerNeeds) -> None:
        self.kernel = kernel

    # -- image.register --------------------------------------------------------------------

    def check_register(self, pid: int, spec: Mapping[str, Any],
                       manifests: Manifests = ()) -> AgentImage:
        """Refuse an image wider than process `pid`'s authority (`NotCapable`), or one that
        cannot be registered (`InvalidArgument`, `Conflict`). Returns it parsed."""
        image = AgentImage.from_json(dict(spec))
        proc = self.kernel.process(pid)
        for need in image.needs:
            self._within(proc, need, manifests, image.name, "declares")
        for tool in image.tools:
            if isinstance(tool, str):
                builtin_spec(tool)  # InvalidArgument for an unknown builtin
                continue
            for entry in tool.get("manifest") or ():
                self._within(proc, CapSpec.parse(entry), manifests, image.name,
                             f"has tool {tool.get('name')!r} whose manifest names")
        self.check_planner(proc, image.planner, image.name)
        for type_name, schema in image.types.items():
            known = self.kernel.images.types.get(type_name)
            if known is not None and known != schema:
                raise Conflict(f"object type {type_name!r} is already defined differently")
            compile_schema(schema, f"type {type_name!r}")
        return image

    async def register(self, pid: int, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Register an image for process `pid` (its check has passed): its code stored, its
        types defined, its deny rules added, as a new version unless nothing changed."""
        image = AgentImage.from_json(dict(spec))
        proc = self.kernel.process(pid)
        tools: list[Any] = []
        for tool in image.tools:
            tools.append(tool if isinstance(tool, str)
                         else await self.kernel.tools.prepare_tool(tool))  # checked: `check`
        for type_name, schema in image.types.items():
            self.kernel.images.define_type(type_name, schema)
        denies = deny_rules(image.denies, proc.caps.caps())
        built = AgentImage.from_json({**image.to_json(), "tools": tools,
                                      "denies": [d.to_wire() for d in denies],
                                      "origin": {"registered_by": pid}})
        version, stored = self._store(built.name, built.to_json())
        return {"name": built.name, "version": version, "tools": self._tool_names(built),
                "needs": [n.to_wire() for n in built.needs],
                "denies": [d.to_wire() for d in built.denies], SPEC_HASH: spec_digest(stored)}

    def _within(self, proc: AgentProcess, spec: CapSpec, manifests: Manifests, name: str,
                what: str) -> None:
        if not within_any(spec, proc.caps.caps()):
            raise NotCapable(f"image {name!r} {what} {_wire(spec)}: more than process "
                             f"{proc.pid} holds", resource=name)
        for manifest in manifests:
            if not within_any(spec, manifest):
                raise NotCapable(f"image {name!r} {what} {_wire(spec)}: outside the calling "
                                 "tool's manifest", resource=name)

    def check_planner(self, proc: AgentProcess, settings: Mapping[str, Any], name: str) -> None:
        """A scripted planner (or none) is anyone's to give; a model planner only one that
        reaches the same model, server and key as the process's own."""
        if not settings:
            return
        kind = settings.get("kind")
        if kind not in PLANNER_KINDS:
            raise InvalidArgument(f"image {name!r}: no planner of kind {kind!r}")
        if kind == "scripted":
            actions = settings.get("actions", [])
            if not isinstance(actions, list):
                raise InvalidArgument(f"image {name!r}: a scripted planner's actions are a list")
            for action in actions:
                action_from_json(action)
            return
        own = proc.image.planner
        if any(settings.get(key) != own.get(key) for key in MODEL_KEYS):
            raise NotCapable(f"image {name!r}: its planner reaches a model (kind, model, "
                             f"base_url, api_key_env) that process {proc.pid}'s own does not",
                             resource=name)

    # -- image.commit ----------------------------------------------------------------------

    def check_commit(self, pid: int, source: int) -> None:
        """Process `pid` may commit itself or a process below it, whose tool table the chain
        vouches for and whose planner it could have given an image itself."""
        src = self.kernel.process(source)
        if source != pid and not self.kernel.is_descendant(pid, source):
            raise NotCapable(f"process {source} is neither process {pid} nor below it",
                             resource=str(source))
        self._tool_table(src)
        self.check_planner(self.kernel.process(pid), src.image.planner, src.image.name)

    def commit(self, source: int, name: str, *, by: int | None = None,
               manifests: Manifests = ()) -> AgentImage:
        """An image named `name` from process `source`'s latest checkpoint (one is taken if
        it has none yet), made by process `by` (narrowed to what it holds) or the host."""
        src = self.kernel.process(source)
        tools = self._tool_table(src)
        checkpoint = self.kernel.store.checkpoint(source)
        if checkpoint is None or checkpoint.get("id") is None:
            if checkpoint is not None and checkpoint["state"].get("pending"):
                raise Conflict(f"process {source} is mid-step: commit it after the step")
            recovery.save(self.kernel.store, src, len(src.history))
            checkpoint = self.kernel.store.checkpoint(source)
            assert checkpoint is not None
        base_name, base_version = checkpoint["state"].get(
            "image", [src.image.name, src.image.version])
        base = self.kernel.images.image(base_name, base_version)
        needs: Sequence[CapSpec] = base.needs
        denies = deny_rules(base.denies, src.caps.caps())
        if by is not None:
            maker = self.kernel.process(by).caps.caps()
            # Its own namespace is its own: every process is born with one of its own.
            needs = narrow_needs(needs, [c for c in maker if c.scope != own_namespace(by)
                                         or c.kind != "obj"])
            for manifest in manifests:
                needs = narrow_needs(needs, manifest)
            denies = deny_rules(denies, maker)
        origin = {"committed_from": {"pid": source, "checkpoint": checkpoint["id"],
                                     "step": checkpoint["step"],
                                     "image": f"{base.name}:{base.version}"},
                  "by": "host" if by is None else by}
        image = AgentImage(name, "1", tuple(tools), tuple(needs), base.budget, base.planner,
                           base.types, f"committed from process {source} at checkpoint "
                           f"{checkpoint['id']}", tuple(denies), origin)
        self.kernel.store.pin_checkpoint(checkpoint["id"])
        _, stored = self._store(name, image.to_json())
        # As stored (not read back: loading checks a row against the record that vouches
        # for it, and that record is written next, by the caller).
        return AgentImage.from_json(stored)

    def _store(self, name: str, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Store `spec` as `name`'s next version: the version, and the row as the kernel built
        it. Its record vouches for this, never the row read back: a database write between
        the store and the record would be vouched for (and is refused at load instead)."""
        version = self.kernel.store.add_image_version(name, spec)
        return version, {**spec, "version": version}

    def _tool_table(self, proc: AgentProcess) -> list[Any]:
        """A process's tool table as an image lists it: builtins by name, code by its stored
        hash, registrations read back as the audit chain vouches for them (`Tampered` for
        one it does not)."""
        tools = {**self.kernel.tools.image_tools(proc.image),
                 **self.kernel.store.process_tools(proc.pid)}
        out: list[Any] = []
        for name, spec in sorted(tools.items()):
            if spec.get("refused"):
                raise Tampered(f"process {proc.pid}'s tool {name!r}: {spec['refused']}")
            out.append(name if spec["lang"] == "builtin" else {"name": name, **spec})
        return out

    @staticmethod
    def _tool_names(image: AgentImage) -> list[str]:
        return [t if isinstance(t, str) else t["name"] for t in image.tools]

