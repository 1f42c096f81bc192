"""Images and object types: registering an agent image (its types defined, its tools checked
and their code stored), reading one back, and the JSON Schemas Object Memory payloads meet."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from broker.errors import Conflict, InvalidArgument, NotFound
from broker.kernel.image import AgentImage
from broker.schema import compile_schema, validate

if TYPE_CHECKING:
    from broker.kernel.ports import ImagesNeeds

ANY_JSON = "json"


class Images:
    def __init__(self, kernel: ImagesNeeds) -> None:
        self.kernel = kernel
        self.types: dict[str, dict[str, Any]] = kernel.store.object_types()

    async def register_image(self, image: AgentImage | Mapping[str, Any], *,
                             record: Callable[[AgentImage], None] | None = None
                             ) -> AgentImage:
        """Check an image, prepare its tools and store it; `record` (the host's record of
        the act) runs after every check, before the image is stored."""
        if not isinstance(image, AgentImage):
            image = AgentImage.from_json(dict(image))
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
        _, spec = self.kernel.store.get_image(name, version)
        return AgentImage.from_json(spec)

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
