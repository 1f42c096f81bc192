"""Images and object types: registering an agent image (its types defined, its tools checked
and their code stored), reading one back (as the audit chain vouches for it: docs/DESIGN.md,
invariant 15), and the JSON Schemas Object Memory payloads meet."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from broker.errors import Conflict, InvalidArgument, NotFound
from broker.kernel import too_deep
from broker.kernel.image import AgentImage
from broker.kernel.trio_thread import on_trio_thread
from broker.schema import compile_schema, validate
from broker.store.audit import ANCHOR_RECORD, AuditRecord
from broker.store.vouch import ImageDigests, Tampered, spec_digest

if TYPE_CHECKING:
    from broker.kernel.ports import ImagesNeeds

ANY_JSON = "json"
# What a kernel records of the stored images it refused (each once): rows are anyone's who
# writes the database, as many as they like.
MAX_NOTED_IMAGES = 16
MAX_NOTED_TEXT = 512
# Images built from vouched specs, kept to be handed out again (emptied when full).
MAX_BUILT = 256


class Images:
    def __init__(self, kernel: ImagesNeeds) -> None:
        self.kernel = kernel
        self.types: dict[str, dict[str, Any]] = kernel.store.object_types()
        # The digest of each image row found vouched for: loading it again costs a hash,
        # not a scan of the chain (a row edited since is looked up again); and what the
        # chain vouches for, read once and then only the records after it.
        self._vouched: dict[tuple[str, str], str] = {}
        self._digests = ImageDigests()
        self._reading = threading.Lock()  # (images load on worker threads too)
        self._noted: set[tuple[str, str]] = set()
        self._built: dict[str, AgentImage] = {}  # by the digest of the spec

    async def register_image(self, image: AgentImage | Mapping[str, Any], *,
                             record: Callable[[AgentImage], None] | None = None
                             ) -> AgentImage:
        """Check an image, prepare its tools and store it; `record` (the host's record of
        the act) runs after every check, before the image is stored."""
        if not isinstance(image, AgentImage):
            image = AgentImage.from_json(dict(image))
        too_deep.refuse_unplain(image.to_json(), "the image")  # (a process's: as its args)
        for need in image.needs:
            self.kernel.tools.check_kind(need.kind)  # a host kind: one of this kernel's tools
        for type_name, schema in image.types.items():
            self.define_type(type_name, schema)
        tools = []
        for tool in image.tools:
            if isinstance(tool, str):
                self.kernel.tools.named_spec(tool)  # a builtin or a host tool, or it raises
                tools.append(tool)
            else:
                tools.append(await self.kernel.tools.prepare_tool(tool))
        image = AgentImage.from_json({**image.to_json(), "tools": tools})
        self._check_unchanged(image)
        if record is not None:
            record(image)
        self.kernel.store.put_image(image.name, image.version, image.to_json())
        return image

    def _check_unchanged(self, image: AgentImage) -> None:
        """Refused before its record, not after: the store keeps a name and version as first
        registered, and a record carrying the digest of a spec it then refused would vouch
        for that spec (`vouch.ImageDigests`), so a row edited to it would verify. (The
        store's own check stays for a registration racing this one from another broker.)"""
        try:
            _, stored = self.kernel.store.get_image(image.name, image.version)
        except NotFound:
            return
        if stored != image.to_json():
            raise Conflict(f"image {image.name}:{image.version} is already registered "
                           "differently")

    def image(self, name: str, version: str | None = None) -> AgentImage:
        """An image as stored, if the chain vouches for its row; `Tampered` (recorded) if
        not: every spawn, exec, fork, commit and recovery loads its image here. By name
        alone, the version the chain registered last (`ImageDigests.newest`), whatever row
        the store holds as newest (its order is anyone's who writes the database): a row
        planted as a newer version is recorded and passed over (it must not deny the genuine
        image its spawns), an older one made newest is passed over; a newest version whose
        row or record was edited, or whose row is gone, raises (never a fallback to an older,
        wider version)."""
        named, spec = self.kernel.store.get_image(name, version)
        key, digest = (name, named), spec_digest(spec)
        if self._vouched.get(key) == digest and (
                version is not None or self._digests.newest.get(name, named) == named):
            return self._built_from(spec, digest)
        with self._reading:
            self.kernel.store.image_vouches(self._digests)
            problem = self._digests.image_problem(name, named, spec)
            registered = self._digests.newest.get(name)
            known = self._digests.knows(name, named)
        if version is None and registered not in (None, named) and (
                known != (problem is not None)):  # (else an unchecked row, or an edited one)
            if problem is not None:  # planted as a newer version, or its record hidden:
                self._note(key, problem)  # taken for planted only in a chain found whole
                # (a row no image record names is planted only if no record was removed
                # or edited out of their number: loading reads those records, not links)
                broken = self.kernel.store.chain_links().walk()
                if broken is not None:
                    raise Tampered(f"image {name}:{named} refused: {problem}; no older "
                                   "version is taken in its place: the audit is broken at "
                                   f"{broken}")
            return self._registered_last(name, registered)  # type: ignore[arg-type]
        if problem is not None:
            self._note(key, problem)
            raise Tampered(f"image {name}:{named} refused: {problem}")
        self._vouched[key] = digest
        return self._built_from(spec, digest)

    def _built_from(self, spec: dict[str, Any], digest: str) -> AgentImage:
        """The image of a vouched `spec` (`digest`, its digest): one object for every load
        of the same spec, so the processes of an image share it (frozen, and nothing writes
        its maps) instead of each holding a copy built again at its spawn."""
        image = self._built.get(digest)
        if image is None:
            if len(self._built) >= MAX_BUILT:
                self._built.clear()
            image = self._built[digest] = AgentImage.from_json(spec)
        return image

    def _registered_last(self, name: str, version: str) -> AgentImage:
        """The version of `name` the chain registered last; its row gone is `Tampered`."""
        try:
            return self.image(name, version)
        except NotFound:
            problem = (f"image {name}:{version}, the version the audit registered last, is "
                       "not stored: deleted")
            self._note((name, version), problem)
            raise Tampered(f"image {name}:{version} refused: {problem}") from None

    @on_trio_thread  # a threaded call's check (a child's spawn) may load an image
    def _note(self, key: tuple[str, str], problem: str) -> None:
        """An `audit.anchor` record of an image refused, once per image per kernel, and for
        at most `MAX_NOTED_IMAGES` images (then one saying more were)."""
        if key in self._noted or len(self._noted) > MAX_NOTED_IMAGES:
            return
        self._noted.add(key)
        if len(self._noted) > MAX_NOTED_IMAGES:
            problem = "more stored images no record vouches for were refused"
        self.kernel.store.append_audit(AuditRecord(phase="admin", syscall=ANCHOR_RECORD,
                                                   detail={"problem": problem[:MAX_NOTED_TEXT]}))

    def define_type(self, name: str, schema: dict[str, Any]) -> None:
        """Define an Object Memory type: a name and the JSON Schema its payloads must meet."""
        compile_schema(schema, f"type {name!r}")
        self.kernel.store.put_type(name, schema)
        self.types[name] = schema

    def object_schema_check(self, type_name: str, value: Any) -> None:
        if type_name == ANY_JSON:
            return
        schema = self.types.get(type_name)
        if schema is None:
            raise InvalidArgument(f"no object type {type_name!r}")
        validate(schema, value, f"object of type {type_name}")
